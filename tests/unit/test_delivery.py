"""The production delivery path, without sockets.

Live messages are written straight to the server's transport, past ASGI
(``core.delivery.Delivery.decide``, ``core.servers.backpressure``); the
decisions alone are in test_delivery_decisions.py. These tests run it
under uvicorn's own WebSocket protocol over an in-memory transport
(tests/support/fake_transport.py); every frame is parsed by websockets'
client. Daphne's equivalent runs in tests/integration/test_output_gate.py.
"""

import asyncio
import json
import logging

import pytest
from channels.db import database_sync_to_async
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from core import consumers, metrics, services
from core.fanout import get_hub
from core.logcontext import ContextFilter
from core.models import Message
from core.servers import backpressure
from core.servers.backpressure import text_frame
from harness.waiting import async_wait_until, wait_until
from tests.factories import RoomFactory
from tests.support.fake_transport import (
    Client,
    MemoryTransport,
    fake_transport_client,
)

pytestmark = pytest.mark.django_db(transaction=True)


def path(slug: str, query: str = "") -> str:
    return f"/ws/rooms/{slug}/" + (f"?{query}" if query else "")


async def greeted(client: Client) -> None:
    """Read the welcome and the first presence."""
    assert (await client.receive_json())["type"] == "welcome"
    assert (await client.receive_json())["type"] == "presence"


async def messages_through(client: Client, fence: dict) -> list[dict]:
    """Message frames up to and including ``fence``, presence aside."""
    frames: list[dict] = []
    while not frames or frames[-1] != fence:
        frame = await client.receive_json()
        if frame["type"] != "presence":
            frames.append(frame)
    return frames


async def post(room: object, body: str) -> dict:
    return (await services.post_message(room=room, author=None, body=body)).message


async def test_live_messages_are_written_past_asgi_once_each_in_order():
    """Each listener of the room gets every message once, in order, and
    none of them went through ASGI; a listener of another room gets none."""
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    side = await database_sync_to_async(RoomFactory)(slug="side")
    async with (
        fake_transport_client(path("lobby")) as first,
        fake_transport_client(path("lobby")) as second,
        fake_transport_client(path("side")) as elsewhere,
    ):
        for client in (first, second, elsewhere):
            await greeted(client)
        catch_ups = get_hub().tail_catch_ups
        sent = [await post(lobby, f"message {n}") for n in range(3)]
        side_fence = await post(side, "fence in side")
        lobby_fence = await post(lobby, "fence in lobby")
        for client in (first, second):
            assert await messages_through(client, lobby_fence) == [*sent, lobby_fence]
            assert not any('"message"' in text for text in client.server.asgi_texts)
        assert await messages_through(elsewhere, side_fence) == [side_fence]
        assert get_hub().tail_catch_ups == catch_ups


async def test_a_live_copy_of_a_replayed_message_is_not_written_again():
    """A publish that lands after the replay read the message: the fast
    path drops it by seq."""
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    for n in range(3):
        await database_sync_to_async(services.store_message)(
            room=lobby, author=None, body=f"old {n}", client_id=None
        )
    async with fake_transport_client(path("lobby", "after=0")) as client:
        assert (await client.receive_json())["type"] == "welcome"
        replay = [(await client.receive_json())["seq"] for _ in range(3)]
        assert replay == [1, 2, 3]
        assert (await client.receive_json())["type"] == "replayed"
        for seq in (2, 3):  # the last one replayed, too
            late = await database_sync_to_async(
                lambda seq=seq: services.frame_for(
                    Message.objects.get(room=lobby, seq=seq), "lobby"
                )
            )()
            await services.publish_message(lobby.pk, late)
        # A fence: the late copy, had it been written, would come before it.
        fence = await post(lobby, "fence")
        assert await messages_through(client, fence) == [fence]


async def test_a_catch_up_starts_after_what_was_written_past_asgi():
    """What the fast path wrote counts as sent: a catch-up after an outage
    sends only what was stored meanwhile, not those messages again."""
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    async with fake_transport_client(path("lobby")) as client:
        await greeted(client)
        live = [await post(lobby, f"live {n}") for n in range(3)]
        assert await messages_through(client, live[-1]) == live
        lost = await database_sync_to_async(services.store_message)(
            room=lobby, author=None, body="during the outage", client_id=None
        )
        get_hub()._catch_up_everyone()
        # Anything resent would come before the lost one, or before a fence.
        assert await messages_through(client, lost.message) == [lost.message]
        fence = await post(lobby, "fence")
        assert await messages_through(client, fence) == [fence]


async def test_frames_go_through_asgi_when_compression_was_negotiated():
    """The shared frame is uncompressed: with permessage-deflate on, live
    messages take the ASGI path and still arrive once, in order."""
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    async with fake_transport_client(path("lobby"), deflate=True) as client:
        assert client.server.conn.extensions, "permessage-deflate was not agreed"
        await greeted(client)
        catch_ups = get_hub().tail_catch_ups
        sent = [await post(lobby, f"message {n}") for n in range(3)]
        assert await messages_through(client, sent[-1]) == sent
        through_asgi = [json.loads(text) for text in client.server.asgi_texts]
        assert [f for f in through_asgi if f["type"] == "message"] == sent
        # Live, not by the delivery bound's catch-up from the database.
        assert get_hub().tail_catch_ups == catch_ups


def slow_closes() -> float:
    counted = metrics.REGISTRY.get_sample_value("switchboard_slow_client_closes_total")
    return counted or 0.0


async def test_a_client_that_stops_reading_gets_what_fit_then_4008(settings, caplog):
    """Past OUTPUT_BUFFER_BYTES unread, the next message is not written: the
    4008 close frame queues behind what was, and a client that reads on gets
    every message up to the limit, in order, then the close. The operator
    sees one warning, on behalf of that connection, and one count."""
    settings.OUTPUT_BUFFER_BYTES = 4096
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    before = slow_closes()
    caplog.handler.addFilter(ContextFilter())  # the connection's log fields
    async with fake_transport_client(path("lobby")) as client:
        await greeted(client)
        # The client reads nothing more while these are delivered.
        unread = client.transport.get_write_buffer_size
        with caplog.at_level(logging.WARNING, logger="core.consumers"):
            n = 0
            while unread() <= settings.OUTPUT_BUFFER_BYTES:
                was = unread()
                await post(lobby, f"{n} " + "x" * 1000)
                await async_wait_until(
                    lambda was=was: unread() > was, 5, 0.01, "the message written"
                )
                n += 1
            # Two more arrive together: the first finds the buffer past the
            # limit, the second a connection already closing.
            late = [
                await database_sync_to_async(services.store_message)(
                    room=lobby, author=None, body=f"late {n}", client_id=None
                )
                for n in range(2)
            ]
            await asyncio.gather(
                *(services.publish_message(lobby.pk, m.message) for m in late)
            )
            await async_wait_until(
                lambda: client.server.close_sent, 5, 0.01, "the 4008 close"
            )
        frames = []
        while (frame := await client.receive()).opcode is Opcode.TEXT:
            frames.append(json.loads(frame.data))
        close = frame
    messages = [f for f in frames if f["type"] == "message"]
    # The message that found the buffer past the limit, and all after it,
    # were not written: the client resumes with ?after= when it reconnects.
    size = len(text_frame(json.dumps(messages[0]).encode()))
    written = settings.OUTPUT_BUFFER_BYTES // size + 1
    assert [m["seq"] for m in messages] == list(range(1, written + 1))
    assert close.opcode is Opcode.CLOSE
    assert client.protocol.close_rcvd.code == consumers.CLOSE_TOO_SLOW == 4008
    # Later messages found it closing: still one close, one count, one line.
    assert slow_closes() == before + 1
    warnings = [r for r in caplog.records if r.name == "core.consumers"]
    assert [(r.event, r.getMessage(), r.room) for r in warnings] == [
        ("ws.too_slow", "closing a client of room lobby: it stopped reading", "lobby")
    ]


async def test_a_client_that_never_reads_is_cut_off_after_the_grace(
    settings, monkeypatch
):
    """The close frame waits behind unread output; a client that does not
    read up to it within the grace period is dropped, and the application
    sees it leave."""
    settings.OUTPUT_BUFFER_BYTES = 4096
    monkeypatch.setattr(consumers, "CLOSE_GRACE_SECONDS", 0.2)
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    async with fake_transport_client(path("lobby")) as client:
        await greeted(client)
        for n in range(8):
            await post(lobby, f"{n} " + "x" * 1000)
        await async_wait_until(lambda: client.transport.aborted, 5, 0.01, "the drop")
        await async_wait_until(
            lambda: not client.server.tasks, 5, 0.01, "the application's exit"
        )


async def test_a_client_that_keeps_reading_is_never_closed(settings):
    """The limit is on unread bytes, not on what is sent: the same traffic,
    read as it comes, is delivered whole."""
    settings.OUTPUT_BUFFER_BYTES = 4096
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    async with fake_transport_client(path("lobby")) as client:
        await greeted(client)
        for n in range(8):
            sent = await post(lobby, f"{n} " + "x" * 1000)
            assert await messages_through(client, sent) == [sent]
        assert not client.server.close_sent


@pytest.mark.parametrize(
    "length", [0, 1, 125, 126, 127, 65535, 65536, 70000], ids=lambda n: f"{n}B"
)
def test_the_shared_frame_is_what_a_websocket_client_parses(length):
    """``text_frame`` at every length-encoding boundary (RFC 6455 5.2): the
    shortest header, and websockets' own parser reads the payload whole."""
    payload = ("é" * (length // 2) + "a" * (length % 2)).encode()
    assert len(payload) == length
    wire = text_frame(payload)
    # The shortest length encoding, which RFC 6455 requires of a sender.
    header = 2 if length < 126 else 4 if length < 1 << 16 else 10
    assert len(wire) == header + length
    reader = StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    with pytest.raises(StopIteration) as parsed:
        next(parser)
    frame = parsed.value.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)
    assert not reader.buffer, "bytes after the frame"


class UnfamiliarServer:
    """An asyncio server whose WebSocket protocol core.servers.backpressure does not
    know, shaped like uvicorn's wsproto one: a transport, a connection
    object without websockets' ``extensions``, a ``close_sent`` flag."""

    def __init__(self, *, legacy: bool = False) -> None:
        self.transport = MemoryTransport(self)
        if not legacy:  # uvicorn's legacy websockets one has neither
            self.conn = object()
            self.close_sent = False
        self.lost = False

    async def send(self, message: dict) -> None:
        raise AssertionError("not called here")

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


@pytest.mark.parametrize("server", ["unfamiliar", "legacy", "uvicorn"])
async def test_the_buffer_limit_holds_whether_or_not_frames_may_be_written(server):
    """On any asyncio server the limit is on unread bytes, strictly above it;
    only uvicorn's sans-I/O protocol, once open, takes frames directly (here
    it has not opened yet), and dropping aborts the transport."""
    if server == "uvicorn":
        owner = Client(path("x"), []).server
    else:
        owner = UnfamiliarServer(legacy=server == "legacy")
    buffer = backpressure.locate(owner.send, 100)
    assert buffer is not None
    assert owner.transport.high == 200  # pauses only well past the limit
    owner.transport.write(b"q" * 100)
    assert (buffer.queued(), buffer.offer(b"frame")) == (100, backpressure.DECLINED)
    owner.transport.write(b"q")
    assert (buffer.queued(), buffer.offer(b"frame")) == (101, backpressure.TOO_FULL)
    assert bytes(owner.transport.unread) == b"q" * 101, "a frame was written"
    buffer.drop()
    assert owner.transport.aborted


async def test_frames_are_written_directly_only_while_nothing_stands_in_the_way():
    """uvicorn's own send waits while the transport is paused and refuses
    once the client has gone; the direct write declines then too, and the
    frame goes the ASGI way."""
    await database_sync_to_async(RoomFactory)(slug="lobby")
    async with fake_transport_client(path("lobby")) as client:
        await greeted(client)
        transport = client.transport
        buffer = backpressure.locate(client.server.send, 100)
        frame = text_frame(b'{"type": "test"}')
        assert buffer.offer(frame) == backpressure.WRITTEN
        assert transport.take() == frame
        # Past the high-water mark (twice the limit) the transport pauses,
        # and it resumes only below the low-water mark (a quarter of that).
        transport.write(b"q" * 201)
        assert transport.paused
        transport.take(120)
        assert (transport.paused, buffer.queued()) == (True, 81)
        assert buffer.offer(frame) == backpressure.DECLINED
        transport.take()
        assert buffer.offer(frame) == backpressure.WRITTEN
        assert transport.take() == frame
        # The client goes: nothing more is written.
        transport.abort()
        await async_wait_until(
            lambda: client.server.disconnected, 5, 0.01, "the server noticing"
        )
        assert buffer.offer(frame) == backpressure.DECLINED


async def test_a_message_committed_during_the_handshake_is_sent_once_after_it(
    monkeypatch,
):
    """A message that reaches the connection after the handshake read the
    room and before the welcome is held, then sent once, after the welcome,
    through the same path as any live message."""
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    loop = asyncio.get_running_loop()
    hub = get_hub()
    real_open_room = services.open_room
    arrived: list[dict] = []

    def open_room_then_a_message_arrives(**kwargs: object) -> object:
        opened = real_open_room(**kwargs)
        # The first handshake to a room reads it before joining its group
        # and again after: the message comes once the connection listens.
        if not arrived and hub.members.get(services.room_group(lobby.pk)):
            stored = services.store_message(
                room=lobby, author=None, body="during the handshake", client_id=None
            )
            arrived.append(stored.message)
            asyncio.run_coroutine_threadsafe(
                services.publish_message(lobby.pk, stored.message), loop
            ).result(timeout=5)
            wait_until(  # until the hub has handed it over
                lambda: any(
                    listener.delivery.held
                    for listeners in list(hub.members.values())
                    for listener in list(listeners)
                ),
                5,
                0.005,
                "the message held",
            )
        return opened

    monkeypatch.setattr(services, "open_room", open_room_then_a_message_arrives)
    async with fake_transport_client(path("lobby")) as client:
        welcome = await client.receive_json()
        assert (welcome["type"], welcome["last_seq"]) == ("welcome", 0)
        assert await client.receive_json() == arrived[0]
        assert (await client.receive_json())["type"] == "presence"
        fence = await post(lobby, "fence")
        assert await messages_through(client, fence) == [fence]


async def test_a_live_message_waits_for_a_stalled_replay_to_finish(settings):
    """While a replay waits for its client to read, a new message is held,
    not written into the middle of it: the client gets the replay in order,
    ``replayed``, then the new message."""
    settings.OUTPUT_BUFFER_BYTES = 4096  # a replay waits past 1 KiB unread
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    for n in range(20):
        await database_sync_to_async(services.store_message)(
            room=lobby, author=None, body=f"old {n} " + "x" * 200, client_id=None
        )
    async with fake_transport_client(path("lobby", "after=0")) as client:
        await async_wait_until(
            lambda: client.transport.get_write_buffer_size() > 1024,
            5,
            0.01,
            "a stalled replay",
        )
        live = await post(lobby, "while the replay waits")
        kinds = []
        while not kinds or kinds[-1] != "presence":
            frame = await client.receive_json()
            kinds.append(frame.get("seq", frame["type"]))
    assert kinds == ["welcome", *range(1, 21), "replayed", live["seq"], "presence"]
