"""The Server-Sent Events stream (RoomStreamConsumer) through the real ASGI
application: routing, origin, auth, access, resume, limits, backpressure."""

import asyncio
import contextlib
import functools

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator

from backend.asgi import application
from core import admission, consumers, services
from core.models import Message, Room
from core.servers import backpressure
from core.servers.backpressure import DECLINED, TOO_FULL, WriteBuffer
from harness.waiting import async_wait_until
from tests.factories import RoomFactory, private_room
from tests.unit.conftest import (
    connected,
    handshake_threads_busy,
    send_json,
    token_for,
)
from tests.unit.sse_client import Stream

pytestmark = pytest.mark.django_db(transaction=True)


LIVE_SECONDS = 1.5


def sse_path(slug: str, query: str = "") -> str:
    return f"/sse/rooms/{slug}/" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def streaming(slug: str, *, token=None, headers=None, query: str = ""):
    all_headers = list(headers or [])
    if token is not None:
        all_headers.append((b"authorization", f"Token {token}".encode()))
    stream = Stream(application, sse_path(slug, query), all_headers)
    try:
        await stream.open()
        yield stream
    finally:
        with contextlib.suppress(Exception):
            await stream.close()


async def refusal(slug: str, *, token=None, headers=None, method="GET"):
    """(status, headers, body) of a stream that is refused."""
    all_headers = list(headers or [])
    if token is not None:
        all_headers.append((b"authorization", f"Token {token}".encode()))
    stream = Stream(application, sse_path(slug), all_headers, method)
    await stream.open()
    while not stream.ended:
        await stream._more(5)
    await stream.communicator.wait(5)
    return stream.status, stream.headers, stream.body


async def post(slug: str, body: str) -> dict:
    """Store and publish a message as the API does (live, not by the
    delivery bound's catch-up)."""
    room = await database_sync_to_async(Room.objects.get)(slug=slug)
    result = await services.post_message(room=room, author=None, body=body)
    return result.message


# --- the stream ------------------------------------------------------------------


async def test_a_reader_gets_retry_welcome_presence_then_live_messages(lobby):
    await post("lobby", "before")
    async with streaming("lobby") as stream:
        assert stream.status == 200
        assert stream.headers[b"content-type"].startswith(b"text/event-stream")
        assert b"no-cache" in stream.headers[b"cache-control"]
        first = await stream.event()
        low, high = consumers.SSE_RETRY_MS
        assert low <= int(first["retry"]) <= high
        welcome = await stream.frame()
        assert welcome["type"] == "welcome"
        assert (welcome["last_seq"], welcome["_id"]) == (1, "1")
        presence = await stream.frame()
        assert presence["type"] == "presence"
        assert "_id" not in presence
        await post("lobby", "live")
        # Live, well before the delivery bound's catch-up (2-4 s here).
        message, _ = await stream.until("message", timeout=LIVE_SECONDS)
        assert (message["type"], message["body"], message["seq"]) == (
            "message",
            "live",
            2,
        )
        assert message["_id"] == "2"


async def test_last_event_id_resumes_like_after_without_loss_or_duplicates(lobby):
    for n in range(4):
        await post("lobby", f"m{n}")
    headers = [(b"last-event-id", b"2")]
    async with streaming("lobby", headers=headers) as stream:
        welcome, _ = await stream.until("welcome")
        # The welcome's id is where the client was: a drop during the replay
        # resumes from the last message it got, never past the replay.
        assert (welcome["last_seq"], welcome["_id"]) == (4, "2")
        replayed, replay = await stream.until("replayed")
        assert [(f["seq"], f["_id"]) for f in replay] == [(3, "3"), (4, "4")]
        assert (replayed["after"], replayed["count"], replayed["complete"]) == (
            2,
            2,
            True,
        )
        await post("lobby", "m4")
        message, skipped = await stream.until("message")
        assert message["seq"] == 5
        assert all(f["type"] != "message" for f in skipped)


async def test_the_query_after_resumes_when_there_is_no_last_event_id(lobby):
    for n in range(3):
        await post("lobby", f"m{n}")
    async with streaming("lobby", query="after=1") as stream:
        _, replay = await stream.until("replayed")
        assert [f["seq"] for f in replay if f["type"] == "message"] == [2, 3]


async def test_a_bad_last_event_id_is_an_error_frame_not_a_resume(lobby):
    async with streaming("lobby", headers=[(b"last-event-id", b"x")]) as stream:
        await stream.until("welcome")
        error = await stream.frame()
        assert (error["type"], error["code"]) == ("error", "bad_frame")


async def test_a_message_sent_over_a_websocket_reaches_a_stream(alice, lobby):
    async with (
        streaming("lobby") as stream,
        connected("lobby", token=await token_for(alice)) as ws,
    ):
        await stream.until("welcome")
        await send_json(ws, {"type": "send", "body": "hi", "client_id": "c1"})
        message, _ = await stream.until("message")
        assert (message["author"], message["body"], message["_id"]) == (
            "alice",
            "hi",
            "1",
        )


async def test_a_signed_in_reader_counts_in_presence(alice, lobby):
    async with streaming("lobby", token=await token_for(alice)) as stream:
        presence, _ = await stream.until("presence")
        assert "alice" in presence["users"]


async def test_heartbeats_are_comment_lines(lobby, monkeypatch):
    monkeypatch.setattr(consumers, "SSE_HEARTBEAT_SECONDS", 0.05)
    async with streaming("lobby") as stream:
        await stream.until("presence")
        await asyncio.sleep(0.2)
        await post("lobby", "after the beats")
        await stream.until("message")
        assert stream.comments >= 2


# --- who may read --------------------------------------------------------------------


async def test_a_private_room_is_refused_like_an_unknown_one(alice, bob):
    await database_sync_to_async(private_room)(alice, slug="secret")
    for slug, token in (
        ("secret", None),
        ("secret", await token_for(bob)),
        ("nowhere", None),
    ):
        status, _, _ = await refusal(slug, token=token)
        assert status == 403


async def test_a_member_reads_a_private_room_by_token(alice):
    await database_sync_to_async(private_room)(alice, slug="secret")
    async with streaming("secret", token=await token_for(alice)) as stream:
        assert stream.status == 200
        welcome, _ = await stream.until("welcome")
        assert welcome["user"] == "alice"


async def test_a_bad_token_is_refused_not_anonymous(lobby):
    status, _, _ = await refusal("lobby", token="not-a-token")
    assert status == 403


async def test_the_origin_policy_applies(lobby, settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    status, _, _ = await refusal(
        "lobby", headers=[(b"origin", b"https://evil.example")]
    )
    assert status == 403
    async with streaming(
        "lobby", headers=[(b"origin", b"http://testserver")]
    ) as stream:
        assert stream.status == 200


async def test_only_get_is_a_stream(lobby):
    status, headers, _ = await refusal("lobby", method="POST")
    assert (status, headers[b"allow"]) == (405, b"GET")


async def test_other_sse_paths_are_404(lobby):
    communicator = HttpCommunicator(application, "GET", "/sse/elsewhere/")
    assert (await communicator.get_response())["status"] == 404


async def test_a_removed_member_s_stream_ends_with_4403(alice, bob):
    room = await database_sync_to_async(private_room)(alice, bob, slug="secret")
    bob_token = await token_for(bob)
    async with streaming("secret", token=bob_token) as stream:
        await stream.until("presence")
        await database_sync_to_async(services.remove_member)(
            room=room, actor=alice, username="bob"
        )
        closed, _ = await stream.until("close")
        assert (closed["_event"], closed["code"]) == ("close", 4403)
        assert stream.ended
    status, _, _ = await refusal("secret", token=bob_token)
    assert status == 403


# --- limits ------------------------------------------------------------------------


async def test_a_full_process_refuses_with_429_and_retry_after(lobby, settings):
    settings.CONNECTIONS_PER_PROCESS = 0
    status, headers, body = await refusal("lobby")
    assert status == 429
    assert int(headers[b"retry-after"]) >= 1
    assert b"too_many_connections" in body
    assert consumers.open_connections() == 0


async def test_streams_and_sockets_share_the_per_user_slots(alice, lobby, settings):
    settings.CONNECTIONS_PER_USER = 1
    token = await token_for(alice)
    async with connected("lobby", token=token):
        status, _, _ = await refusal("lobby", token=token)
        assert status == 429


async def test_a_stream_holds_no_http_turn(lobby, settings):
    """Streams are routed ahead of HttpAdmission: with one HTTP turn, an
    open stream leaves it for Django."""
    settings.HTTP_CONCURRENCY = 1
    async with streaming("lobby") as stream:
        await stream.until("welcome")
        communicator = HttpCommunicator(
            application, "GET", "/api/rooms/", headers=[(b"host", b"testserver")]
        )
        response = await communicator.get_response(timeout=5)
        assert response["status"] == 200


async def test_closing_the_stream_frees_its_slot_and_presence(alice, lobby):
    before = consumers.open_connections()
    async with streaming("lobby", token=await token_for(alice)) as stream:
        await stream.until("presence")
        assert consumers.open_connections() == before + 1
    for _ in range(50):
        if consumers.open_connections() == before:
            break
        await asyncio.sleep(0.02)
    assert consumers.open_connections() == before


# --- a stream that is not read --------------------------------------------------------


class Unread:
    """A server buffer that fills: what ``locate_stream`` would see of a
    client that stopped reading. Direct writes are refused, as they must be."""

    def __init__(self) -> None:
        self.queued_bytes = 0
        self.dropped = False
        self.offered: list[bytes] = []

    def offer(self, frame: bytes) -> str:
        self.offered.append(frame)
        return TOO_FULL if self.queued_bytes > 1000 else DECLINED

    def buffer(self) -> WriteBuffer:
        return WriteBuffer(self.offer, self.drop, lambda: self.queued_bytes)

    def drop(self) -> None:
        self.dropped = True


@pytest.fixture
def unread(monkeypatch, settings):
    settings.OUTPUT_BUFFER_BYTES = 1000
    wire = Unread()
    monkeypatch.setattr(
        backpressure, "locate_stream", lambda send, limit: wire.buffer()
    )
    monkeypatch.setattr(consumers, "CLOSE_GRACE_SECONDS", 0.05)
    return wire


async def test_a_live_message_to_an_unread_stream_closes_it_with_4008(lobby, unread):
    async with streaming("lobby") as stream:
        await stream.until("presence")
        unread.queued_bytes = 5000
        await post("lobby", "x")
        closed, skipped = await stream.until("close")
        assert closed["code"] == 4008
        assert all(f["type"] != "message" for f in skipped)
        await asyncio.sleep(0.2)
        assert unread.dropped


async def test_a_quiet_unread_stream_is_closed_by_its_heartbeat(
    lobby, unread, monkeypatch
):
    monkeypatch.setattr(consumers, "SSE_HEARTBEAT_SECONDS", 0.05)
    async with streaming("lobby") as stream:
        await stream.until("presence")
        unread.queued_bytes = 5000
        closed, _ = await stream.until("close")
        assert closed["code"] == 4008


# --- the HTTP write buffer ---------------------------------------------------------


class FakeTwistedTransport:
    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abortConnection(self) -> None:
        self.aborted = True


class FakeWebRequest:
    """Daphne's HTTP protocol: no WebSocket state; its channel's transport."""

    def __init__(self) -> None:
        self.transport = FakeTwistedTransport()


def handle_reply(protocol, message):  # Daphne's Server.handle_reply
    pass


def test_the_stream_buffer_reads_queued_bytes_and_never_writes_a_frame():
    request = FakeWebRequest()
    wire = backpressure.locate_stream(functools.partial(handle_reply, request), 100)
    assert wire is not None
    frame = backpressure.text_frame(b'{"type": "message"}')
    assert wire.offer(frame) is DECLINED
    request.transport._tempDataLen = 150
    assert wire.queued() == 150
    assert wire.offer(frame) is TOO_FULL
    assert request.transport.written == []
    wire.drop()
    assert request.transport.aborted


def test_the_stream_buffer_on_asyncio_declines_too():
    class Transport:
        def get_write_buffer_size(self) -> int:
            return 10

        def abort(self) -> None: ...

        def write(self, data: bytes) -> None:
            raise AssertionError("written directly")

    class Cycle:
        transport = Transport()

        async def send(self, message) -> None: ...

    wire = backpressure.locate_stream(Cycle().send, 100)
    assert wire is not None
    assert wire.offer(b"frame") is DECLINED
    assert wire.queued() == 10


async def test_messages_are_stored_once_and_streamed_once(lobby):
    """No duplicates when a live copy races the replay."""
    await post("lobby", "a")
    async with streaming("lobby", headers=[(b"last-event-id", b"0")]) as stream:
        await post("lobby", "b")
        seen = []
        while len(seen) < 2:
            frame = await stream.frame()
            if frame["type"] == "message":
                seen.append(frame["seq"])
        await post("lobby", "c")
        frame, _ = await stream.until("message")
        seen.append(frame["seq"])
    assert seen == [1, 2, 3]
    assert await database_sync_to_async(Message.objects.count)() == 3


# --- typing over HTTP ----------------------------------------------------------------


async def post_typing(slug: str, token: str | None) -> int:
    headers = [(b"host", b"testserver")]
    if token is not None:
        headers.append((b"authorization", f"Token {token}".encode()))
    communicator = HttpCommunicator(
        application, "POST", f"/api/rooms/{slug}/typing/", headers=headers
    )
    return (await communicator.get_response(timeout=5))["status"]


async def test_typing_over_http_reaches_readers_once_per_interval(alice, bob, lobby):
    async with streaming("lobby", token=await token_for(bob)) as stream:
        await stream.until("presence")
        alice_token = await token_for(alice)
        assert await post_typing("lobby", alice_token) == 202
        assert await post_typing("lobby", alice_token) == 202  # dropped: too soon
        typing, _ = await stream.until("typing")
        assert typing["user"] == "alice"
        await post("lobby", "next")
        _, between = await stream.until("message")
        assert [f for f in between if f["type"] == "typing"] == []


async def test_typing_over_http_needs_a_signed_in_reader(alice, bob):
    await database_sync_to_async(private_room)(alice, slug="secret")
    assert await post_typing("secret", None) == 401
    assert await post_typing("nowhere", None) == 401
    assert await post_typing("secret", await token_for(bob)) == 404
    await database_sync_to_async(RoomFactory)(slug="lobby")
    assert await post_typing("lobby", None) == 401


async def test_past_the_handshake_bound_a_stream_gets_503_before_any_work(
    lobby, settings
):
    """Streams and sockets share admission control (core.admission): a
    reconnect storm of streams is bounded like one of sockets."""
    settings.HANDSHAKE_CONCURRENCY = 1
    gate = admission.get_admission()
    held = gate.try_enter()  # a socket's handshake under way
    status, headers, body = await refusal("lobby")
    assert status == 503
    assert int(headers[b"retry-after"]) >= 1
    assert b'"server_busy"' in body
    assert b"retry_window_ms" in body
    assert consumers.open_connections() == 0, "refused before any work"
    held.release(completed=True)
    async with streaming("lobby") as stream:
        assert (await stream.frame())["type"] == "welcome"
        # Greeted (presence is its last step): its place is free again.
        await async_wait_until(lambda: gate.in_progress == 0, timeout=5)


async def test_a_stream_past_its_handshake_deadline_gets_503_and_is_undone(
    lobby, settings, monkeypatch
):
    """The handshakes' database threads are busy: at the deadline the
    stream is answered 503, its queued room read never runs, nothing stays
    counted."""
    settings.HANDSHAKE_DEADLINE_SECONDS = 0.5
    async with handshake_threads_busy(monkeypatch) as rooms_read:
        status, _headers, body = await refusal("lobby")
        assert status == 503
        assert b'"server_busy"' in body
    assert rooms_read == [], "the stream's queued read was cancelled"
    assert consumers.open_connections() == 0
    assert admission.get_admission().in_progress == 0
