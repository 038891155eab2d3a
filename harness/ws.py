"""The one WebSocket client of the tests: ``WsClient`` and ``Clients``.

``WsClient`` speaks the room protocol (docs/protocol.md) over a real
connection: a background task records every frame, and tests wait on what
they expect with a deadline.  ``Clients`` opens clients for one test and
closes them all at its end.  ``bench/wsclient.py`` is a separate tool: a
load generator for thousands of sockets that records timings, not frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.app import AppProcess
from harness.http import HTTP_ERRORS, ahttp_json
from harness.waiting import async_wait_until

FRAME_TIMEOUT_SECONDS = 5.0

Frame = dict[str, Any]


def room_path(slug: str, after: int | None = None) -> str:
    return f"/ws/rooms/{slug}/" + (f"?after={after}" if after is not None else "")


def is_type(kind: str) -> Callable[[Frame], bool]:
    return lambda frame: frame.get("type") == kind


class WsClient:
    """A real WebSocket client that records every frame it receives.

    A background task reads frames as they come; tests wait on them with
    ``wait_for_frame(predicate, timeout)``. Messages are kept by ``seq``
    whether they came live, by replay or by ``history``, as the browser
    client keeps them.
    """

    def __init__(
        self,
        app: AppProcess,
        slug: str,
        *,
        token: str | None = None,
        after: int | None = None,
        name: str = "client",
    ) -> None:
        self.app = app
        self.slug = slug
        self.token = token
        self.after = after
        self.name = name
        self.url = app.ws_url(room_path(slug, after))
        self.frames: list[Frame] = []
        self.messages: list[Frame] = []  # live and replayed, in arrival order
        self.history_messages: list[Frame] = []
        self.sent: dict[str, str] = {}  # client_id -> body of every send
        self.acks: dict[str, int] = {}  # client_id -> seq
        self.close_code: int | None = None
        self.connected_at: float | None = None
        self.closed_at: float | None = None
        self.caught_up_at: float | None = None
        self.ws: websockets.ClientConnection | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<WsClient {self.name} {self.url}>"

    async def connect(self) -> WsClient:
        """Open the connection; ``InvalidStatus`` if the handshake is refused."""
        headers = {"Authorization": f"Token {self.token}"} if self.token else {}
        self.ws = await websockets.connect(
            self.url,
            additional_headers=headers,
            open_timeout=FRAME_TIMEOUT_SECONDS,
            # No client pings: idle must mean idle (no frames from us).
            ping_interval=None,
            close_timeout=2,
            max_size=2**24,
            max_queue=None,
            proxy=None,
        )
        self.connected_at = time.monotonic()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for text in self.ws:
                frame = json.loads(text)
                async with self._changed:
                    self._record(frame)
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            async with self._changed:
                self.close_code = self.ws.close_code
                self.closed_at = time.monotonic()
                self._changed.notify_all()

    def _record(self, frame: Frame) -> None:
        self.frames.append(frame)
        kind = frame.get("type")
        if kind == "message":
            self.messages.append(frame)
        elif kind == "history":
            self.history_messages += frame["messages"]
        elif kind == "ack" and frame.get("client_id"):
            self.acks[frame["client_id"]] = frame["seq"]

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    async def send(self, frame: Frame) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def wait_for(
        self,
        condition: Callable[[], Any],
        timeout: float = FRAME_TIMEOUT_SECONDS,  # noqa: ASYNC109
        what: str = "condition",
    ) -> Any:
        """Wait until ``condition()`` is truthy; it is checked on every frame.

        Fails at once if the connection closes first.
        """
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    while not (result := condition()):
                        if self.closed:
                            raise AssertionError(
                                f"{self.name} closed ({self.close_code}) before "
                                f"{what}; last frames: {self.frames[-5:]}"
                            )
                        await self._changed.wait()
            except TimeoutError:
                raise AssertionError(
                    f"{self.name}: no {what} within {timeout:g} s; "
                    f"last frames: {self.frames[-5:]}"
                ) from None
        return result

    async def wait_for_frame(
        self,
        predicate: Callable[[Frame], bool],
        timeout: float = FRAME_TIMEOUT_SECONDS,  # noqa: ASYNC109
        *,
        since: int = 0,
        what: str = "matching frame",
    ) -> Frame:
        """The first frame from index ``since`` on that matches ``predicate``."""

        def find() -> Frame | None:
            return next((f for f in self.frames[since:] if predicate(f)), None)

        return await self.wait_for(find, timeout, what)

    async def wait_for_seqs(
        self,
        seqs: set[int] | range,
        timeout: float = FRAME_TIMEOUT_SECONDS,  # noqa: ASYNC109
        *,
        earlier: tuple[WsClient, ...] = (),
    ) -> None:
        """Wait until this connection, with the ``earlier`` connections of the
        same user, holds every seq in ``seqs``.
        """
        wanted = set(seqs)
        before = set().union(*(client.held_seqs() for client in earlier))
        await self.wait_for(
            lambda: wanted <= before | self.held_seqs(),
            timeout,
            f"seqs {min(wanted)}..{max(wanted)}" if wanted else "nothing",
        )

    async def wait_closed(
        self,
        timeout: float = FRAME_TIMEOUT_SECONDS,  # noqa: ASYNC109
    ) -> int | None:
        """Wait for the connection to end; return its close code."""
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    while not self.closed:
                        await self._changed.wait()
            except TimeoutError:
                raise AssertionError(
                    f"{self.name} still open after {timeout:g} s"
                ) from None
        return self.close_code

    async def request(
        self,
        frame: Frame,
        predicate: Callable[[Frame], bool],
        timeout: float = FRAME_TIMEOUT_SECONDS,  # noqa: ASYNC109
    ) -> Frame:
        """Send ``frame``; return the first later frame matching ``predicate``."""
        since = len(self.frames)
        await self.send(frame)
        return await self.wait_for_frame(
            predicate, timeout, since=since, what=f"answer to {frame['type']}"
        )

    async def post(self, body: str) -> str:
        """Send a message without waiting; return its ``client_id``."""
        client_id = secrets.token_hex(8)
        self.sent[client_id] = body
        await self.send({"type": "send", "body": body, "client_id": client_id})
        return client_id

    async def send_message(
        self,
        body: str,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> int:
        """Send a message and return the ``seq`` of its ack."""
        client_id = await self.post(body)
        await self.wait_for(
            lambda: client_id in self.acks or self.error_for(client_id),
            timeout,
            f"ack of {body!r}",
        )
        assert not self.error_for(client_id), self.error_for(client_id)
        return self.acks[client_id]

    def error_for(self, client_id: str) -> Frame | None:
        return next(
            (
                frame
                for frame in self.frames
                if frame.get("type") == "error" and frame.get("client_id") == client_id
            ),
            None,
        )

    def errors(self) -> list[Frame]:
        return [frame for frame in self.frames if frame.get("type") == "error"]

    async def publish(
        self,
        bodies: list[str],
        *,
        window: int = 10,
        timeout: float = 60.0,  # noqa: ASYNC109
    ) -> None:
        """Send every body, at most ``window`` unacknowledged at a time."""
        for body in bodies:
            await self.wait_for(
                lambda: len(self.sent) - len(self.acks) < window,
                timeout,
                "room in the send window",
            )
            await self.post(body)
        await self.wait_for(
            lambda: len(self.acks) == len(self.sent) or self.errors(),
            timeout,
            "every ack",
        )
        assert not self.errors(), f"{self.name}: sends refused: {self.errors()[:3]}"

    async def catch_up(
        self,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> Frame:
        """After a ``?after=`` handshake: wait for ``replayed``; while it says
        more remain, page through ``history``, as docs/protocol.md §9.3 asks of
        clients. Returns the ``replayed`` frame.
        """
        replayed = await self.wait_for_frame(
            is_type("replayed"), timeout, what="replayed"
        )
        after = replayed["after"] + replayed["count"]
        has_more = not replayed["complete"]
        while has_more:
            page = await self.request(
                {"type": "history", "after": after, "limit": 100},
                lambda f: (
                    f.get("type") == "history"
                    or (f.get("type") == "error" and f.get("code") == "rate_limited")
                ),
                timeout,
            )
            if page["type"] == "error":
                # The server says when to ask again; that is the protocol.
                await asyncio.sleep(page["retry_after_ms"] / 1000)
                continue
            has_more = page["has_more"]
            if page["messages"]:
                after = page["messages"][-1]["seq"]
        self.caught_up_at = time.monotonic()
        return replayed

    # --- what the user holds -------------------------------------------------

    def seqs(self) -> list[int]:
        """Seqs of live and replayed messages, in arrival order."""
        return [message["seq"] for message in self.messages]

    def held_seqs(self) -> set[int]:
        return set(self.seqs()) | {m["seq"] for m in self.history_messages}

    def duplicate_seqs(self) -> list[int]:
        """Seqs this connection delivered more than once (live or replayed)."""
        seen: set[int] = set()
        duplicates = []
        for seq in self.seqs():
            if seq in seen:
                duplicates.append(seq)
            seen.add(seq)
        return duplicates

    def contiguous_seq(self, base: int = 0) -> int:
        """The highest n such that every seq in base+1..n is held."""
        held = self.held_seqs()
        seq = base
        while seq + 1 in held:
            seq += 1
        return seq

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(5):
                    await self._reader


async def first_to_close(
    clients: list[WsClient],
    timeout: float,  # noqa: ASYNC109
) -> WsClient | None:
    """Wait up to ``timeout`` for any client's connection to end; return it,
    or None if all stayed open that long.
    """
    readers = {client._reader: client for client in clients}
    done, _ = await asyncio.wait(
        [reader for reader in readers if reader is not None],
        timeout=timeout,
        return_when=asyncio.FIRST_COMPLETED,
    )
    return readers[next(iter(done))] if done else None


def timeline(*clients: WsClient) -> dict[int, Frame]:
    """What a user holds across reconnects: one message per seq.

    Duplicates across connections are dropped by seq, as clients do; a seq
    seen twice must carry the same message both times.
    """
    held: dict[int, Frame] = {}
    for client in clients:
        for message in client.messages + client.history_messages:
            earlier = held.setdefault(message["seq"], message)
            assert earlier == message, f"seq {message['seq']}: {earlier} != {message}"
    return held


async def handshake_status(
    app: AppProcess, slug: str, token: str | None = None
) -> int | None:
    """The HTTP status of a refused handshake, or None if it is accepted."""
    client = WsClient(app, slug, token=token, name="probe")
    try:
        await client.connect()
    except InvalidStatus as exc:
        return exc.response.status_code
    await client.close()
    return None


class Clients:
    """Every ``WsClient`` a test opens; all are closed when it ends."""

    def __init__(self) -> None:
        self.all: list[WsClient] = []

    async def open(
        self,
        app: AppProcess,
        slug: str,
        *,
        token: str | None = None,
        after: int | None = None,
        name: str = "client",
    ) -> WsClient:
        """Connect and wait for the connect-time frames.

        ``presence`` ends them (docs/protocol.md §3); with ``after`` the replay comes
        before it.
        """
        client = WsClient(app, slug, token=token, after=after, name=name)
        self.all.append(client)
        await client.connect()
        await client.wait_for_frame(is_type("presence"), what="presence")
        return client

    async def open_refused(
        self, app: AppProcess, slug: str, *, token: str | None = None
    ) -> Frame:
        """Connect where a limit refuses: the error frame, with the close code
        and reason under ``close_code`` and ``close_reason``."""
        client = WsClient(app, slug, token=token, name="refused")
        self.all.append(client)
        await client.connect()
        error = await client.wait_for_frame(is_type("error"), what="the refusal")
        code = await client.wait_closed()
        return {**error, "close_code": code, "close_reason": client.ws.close_reason}

    async def resume(
        self, app: AppProcess, old: WsClient, *, name: str | None = None
    ) -> WsClient:
        """Reconnect ``old``'s user to ``app`` from its highest contiguous seq,
        and catch up (replay, then ``history`` if the replay was partial).
        """
        client = await self.open(
            app,
            old.slug,
            token=old.token,
            after=old.contiguous_seq(),
            name=name or f"{old.name}-resumed",
        )
        await client.catch_up()
        return client

    async def move_all(self, app: AppProcess, olds: list[WsClient]) -> list[WsClient]:
        """What every client of a lost instance does, all at once: notice
        the connection end, then ``resume`` on ``app``.
        """

        async def move(old: WsClient) -> WsClient:
            await old.wait_closed(timeout=10)
            return await self.resume(app, old)

        return list(await asyncio.gather(*(move(old) for old in olds)))

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.all))


async def wait_for_readyz(
    app: AppProcess,
    status: int,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Poll ``GET /readyz`` until it answers ``status``; return its body."""

    async def probe() -> dict[str, Any] | None:
        answer, body = await ahttp_json(app, "GET", "/readyz", timeout=5)
        return body if answer == status else None

    return await async_wait_until(
        probe,
        timeout,
        interval=0.2,
        message=f"{app.name} /readyz answering {status}",
        ignore=HTTP_ERRORS,
    )
