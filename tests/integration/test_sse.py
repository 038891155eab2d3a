"""Server-Sent Events across two real Daphne instances (Redis, PostgreSQL):
a message sent over a WebSocket on A reaches a stream on B; a stream that
reconnects to the other instance with Last-Event-ID loses nothing and gets
nothing twice; a removed member's stream ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any

import pytest

from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room
from harness.ws import Clients
from tests.integration.common import unique_slug

pytestmark = pytest.mark.integration

USERS = 4
EVENT_TIMEOUT_SECONDS = 10.0


@pytest.fixture(scope="module")
def pair(module_launcher: Launcher, deployment: Deployment) -> tuple[Any, Any]:
    a, b = module_launcher.launch(
        "a", "b", env={"SWITCHBOARD_ACCESS_RECHECK_SECONDS": "3600"}
    )
    deployment.fetch_tokens(a, b)
    return a, b


@pytest.fixture(scope="module")
def tokens(pair: tuple[Any, Any], deployment: Deployment) -> list[str]:
    return [deployment.tokens[name] for name in deployment.usernames]


class SseClient:
    """A stream as a browser's EventSource reads it, over a raw socket:
    HTTP/1.1, chunked, events parsed field by field; ``last_id`` is what the
    browser would send as Last-Event-ID."""

    def __init__(self, app: Any, slug: str, *, token: str | None = None) -> None:
        self.app = app
        self.slug = slug
        self.token = token
        self.status = 0
        self.frames: list[dict[str, Any]] = []
        self.seqs: list[int] = []
        self.last_id: str | None = None
        self.ended = False
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self, last_id: str | None = None) -> SseClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.app.port)
        self._writer = writer
        lines = [
            f"GET /sse/rooms/{self.slug}/ HTTP/1.1",
            f"Host: 127.0.0.1:{self.app.port}",
            "Accept: text/event-stream",
        ]
        if self.token:
            lines.append(f"Authorization: Token {self.token}")
        if last_id is not None:
            lines.append(f"Last-Event-ID: {last_id}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        self.status = int(head.split(b" ", 2)[1])
        chunked = b"transfer-encoding: chunked" in head.lower()
        self._task = asyncio.get_running_loop().create_task(self._read(reader, chunked))
        return self

    async def _body(self, reader: asyncio.StreamReader, chunked: bool):
        while True:
            if not chunked:
                data = await reader.read(65536)
                if not data:
                    return
                yield data
                continue
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]

    async def _read(self, reader: asyncio.StreamReader, chunked: bool) -> None:
        buffer = b""
        try:
            async for data in self._body(reader, chunked):
                buffer += data
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._event(block.decode())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended = True
            self.changed.set()

    def _event(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "id" in fields:
            self.last_id = fields["id"]
        if "data" in fields:
            frame = json.loads(fields["data"])
            frame["_event"] = fields.get("event", "message")
            self.frames.append(frame)
            if frame.get("type") == "message":
                self.seqs.append(frame["seq"])
            self.changed.set()

    async def wait_for(self, predicate: Any, what: str) -> None:
        async with asyncio.timeout(EVENT_TIMEOUT_SECONDS):
            while not predicate():
                if self.ended:
                    raise AssertionError(f"stream ended waiting for {what}")
                self.changed.clear()
                await self.changed.wait()

    def find(self, kind: str) -> dict[str, Any] | None:
        return next((f for f in self.frames if f.get("type") == kind), None)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


@pytest.fixture
async def streams() -> Any:
    opened: list[SseClient] = []

    async def open_stream(app: Any, slug: str, **kwargs: Any) -> SseClient:
        last_id = kwargs.pop("last_id", None)
        stream = SseClient(app, slug, **kwargs)
        opened.append(stream)
        return await stream.connect(last_id)

    yield open_stream
    for stream in opened:
        await stream.close()


async def post(app: Any, token: str, slug: str, body: str) -> int:
    status, message = await ahttp_json(
        app,
        "POST",
        f"/api/rooms/{slug}/messages/",
        token=token,
        body={"body": body, "client_id": secrets.token_hex(8)},
    )
    assert status == 201, (status, message)
    return int(message["seq"])


async def test_a_websocket_message_on_a_reaches_a_stream_on_b(
    pair: tuple[Any, Any], tokens: list[str], clients: Clients, streams: Any
) -> None:
    a, b = pair
    slug = unique_slug("sse-fan")
    create_room(a, tokens[0], slug)
    stream = await streams(b, slug)
    assert stream.status == 200
    await stream.wait_for(lambda: stream.find("presence"), "presence")
    sender = await clients.open(a, slug, token=tokens[1], name="sender@A")
    seq = await sender.send_message("over the socket")
    await stream.wait_for(lambda: seq in stream.seqs, f"seq {seq}")
    message = next(f for f in stream.frames if f.get("seq") == seq)
    assert message["body"] == "over the socket"
    assert stream.last_id == str(seq)


async def test_a_stream_resumes_on_the_other_instance_with_last_event_id(
    pair: tuple[Any, Any], tokens: list[str], streams: Any
) -> None:
    a, b = pair
    slug = unique_slug("sse-resume")
    create_room(a, tokens[0], slug)
    first = await streams(a, slug)
    await first.wait_for(lambda: first.find("presence"), "presence")
    for n in range(3):
        await post(b, tokens[1], slug, f"early-{n}")
    await first.wait_for(lambda: len(first.seqs) == 3, "3 messages")
    await first.close()
    for n in range(4):  # while nobody reads
        await post(a, tokens[1], slug, f"away-{n}")
    second = await streams(b, slug, last_id=first.last_id)
    await second.wait_for(lambda: second.find("replayed"), "replayed")
    await post(a, tokens[1], slug, "live")
    await second.wait_for(lambda: 8 in second.seqs, "seq 8")
    seen = first.seqs + second.seqs
    assert seen == list(range(1, 9)), seen  # nothing lost, nothing twice


async def test_a_removed_member_s_stream_ends(
    pair: tuple[Any, Any],
    tokens: list[str],
    deployment: Deployment,
    streams: Any,
) -> None:
    a, b = pair
    slug = unique_slug("sse-revoke")
    create_room(a, tokens[0], slug, private=True)
    member = deployment.usernames[2]
    status, _ = await ahttp_json(
        a,
        "POST",
        f"/api/rooms/{slug}/members/",
        token=tokens[0],
        body={"username": member},
    )
    assert status in (200, 201)
    stream = await streams(b, slug, token=tokens[2])
    assert stream.status == 200
    await stream.wait_for(lambda: stream.find("presence"), "presence")
    status, _ = await ahttp_json(
        a, "DELETE", f"/api/rooms/{slug}/members/{member}/", token=tokens[0]
    )
    assert status == 204
    await stream.wait_for(lambda: stream.find("close"), "the close event")
    assert stream.find("close") == {"type": "close", "code": 4403, "_event": "close"}
    async with asyncio.timeout(EVENT_TIMEOUT_SECONDS):
        while not stream.ended:
            stream.changed.clear()
            await stream.changed.wait()
    await post(a, tokens[0], slug, "after the removal")
    again = await streams(a, slug, token=tokens[2])
    assert again.status == 403
