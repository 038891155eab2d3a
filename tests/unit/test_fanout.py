"""core.fanout: one channel-layer member per process, fanning out locally."""

import asyncio
import contextlib
import time

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from core import services
from core.fanout import get_hub
from core.models import Room
from tests.factories import RoomFactory, UserFactory
from tests.unit.conftest import connected, token_for

pytestmark = pytest.mark.django_db(transaction=True)


async def test_many_connections_make_one_group_member_per_process():
    room = await database_sync_to_async(RoomFactory)(slug="lobby")
    group = services.room_group(room.pk)
    layer = get_channel_layer()
    async with connected("lobby"), connected("lobby"), connected("lobby"):
        assert list(layer.groups[group]) == [get_hub().channel]
    assert group not in layer.groups


async def messages_through(ws, fence: dict) -> list[dict]:
    """The message frames ``ws`` receives up to and including ``fence``
    (presence updates aside). Anything duplicated or sent to the wrong
    room was published before the fence, so it comes before it."""
    frames = []
    while not frames or frames[-1] != fence:
        frame = await ws.receive_json_from()
        if frame["type"] != "presence":
            frames.append(frame)
    return frames


async def test_a_published_message_reaches_every_local_connection_once():
    """Five connections in one room and three in another: each of the
    room's gets every message once, in order, and the other room's none."""
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    side = await database_sync_to_async(RoomFactory)(slug="side")

    async def post(room: Room, body: str) -> dict:
        return (await services.post_message(room=room, author=None, body=body)).message

    async with contextlib.AsyncExitStack() as stack:
        in_lobby = [
            await stack.enter_async_context(connected("lobby")) for _ in range(5)
        ]
        in_side = [await stack.enter_async_context(connected("side")) for _ in range(3)]
        sent = [await post(lobby, f"message {n}") for n in range(3)]
        side_fence = await post(side, "fence in side")
        lobby_fence = await post(lobby, "fence in lobby")
        for ws in in_lobby:
            assert await messages_through(ws, lobby_fence) == [*sent, lobby_fence]
        for ws in in_side:
            assert await messages_through(ws, side_fence) == [side_fence]


async def test_after_an_outage_connections_catch_up_from_the_database():
    await database_sync_to_async(RoomFactory)(slug="lobby")
    user = await database_sync_to_async(UserFactory)(username="carol")
    async with connected("lobby", token=await token_for(user)) as ws:
        room = await database_sync_to_async(Room.objects.get)(slug="lobby")
        # Stored while the layer was down: never published.
        lost = await database_sync_to_async(services.store_message)(
            room=room, author=None, body="during the outage", client_id=None
        )
        get_hub()._catch_up_everyone()
        frame = await ws.receive_json_from()
        assert frame == lost.message


async def test_a_catch_up_starts_after_what_each_connection_was_told():
    """Nothing a connection had (live, or before its welcome) comes again:
    after the catch-up and a fence message, each holds every seq once."""
    room = await database_sync_to_async(RoomFactory)(slug="lobby")

    async def post(body: str) -> int:
        return (await services.post_message(room=room, author=None, body=body)).message[
            "seq"
        ]

    def store(body: str) -> None:  # stored while the layer was down
        services.store_message(room=room, author=None, body=body, client_id=None)

    async with connected("lobby") as early:
        for n in range(3):
            await post(f"live {n}")
        async with connected("lobby") as late:  # welcomed at last_seq 3
            for n in range(2):
                await database_sync_to_async(store)(f"lost {n}")
            get_hub()._catch_up_everyone()
            held = {early: [], late: []}

            async def read_through(ws: object, seq: int) -> None:
                while not held[ws] or held[ws][-1] < seq:
                    frame = await ws.receive_json_from()
                    if frame["type"] == "message":
                        held[ws].append(frame["seq"])

            for ws in held:
                await read_through(ws, 5)  # the two lost ones
            # A fence: anything sent twice would come before it.
            fence = await post("fence")
            for ws in held:
                await read_through(ws, fence)
            assert held[early] == [1, 2, 3, 4, 5, 6]
            assert held[late] == [4, 5, 6]


async def test_probes_come_back_and_raise_no_alarm(settings):
    settings.HUB_PROBE_SECONDS = 0.01
    await database_sync_to_async(RoomFactory)(slug="lobby")
    async with connected("lobby") as ws:
        hub = get_hub()
        deadline = time.monotonic() + 5
        while hub.probes_back < 5:
            assert time.monotonic() < deadline, "probes are not coming back"
            await asyncio.sleep(0.01)
        assert hub.gaps == 0
        # A fence: a probe handed to connections would come before it.
        room = await database_sync_to_async(Room.objects.get)(slug="lobby")
        fence = await services.post_message(room=room, author=None, body="fence")
        assert await messages_through(ws, fence.message) == [fence.message]


async def test_a_skipped_probe_has_every_connection_catch_up(settings):
    """A probe that overtakes earlier ones means events were lost with them;
    once a probe comes back, connections get what was stored meanwhile."""
    settings.HUB_PROBE_SECONDS = 0.01
    await database_sync_to_async(RoomFactory)(slug="lobby")
    async with connected("lobby") as ws:
        room = await database_sync_to_async(Room.objects.get)(slug="lobby")
        # Stored while the subscription was down: never published.
        lost = await database_sync_to_async(services.store_message)(
            room=room, author=None, body="during the gap", client_id=None
        )
        hub = get_hub()
        ahead = {"type": "hub.probe", "n": hub.probes_sent + 1000}
        await get_channel_layer().send(hub.channel, ahead)
        frame = await ws.receive_json_from(timeout=5)
        assert frame == lost.message
        assert hub.gaps == 1


async def messages_within(ws, seconds: float) -> list[dict]:
    """The frames other than presence updates that arrive within ``seconds``."""
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        # Time is the subject: a later tail check could send after any fence.
        if await ws.receive_nothing(timeout=left):
            break
        frame = await ws.receive_json_from()
        if frame["type"] != "presence":
            frames.append(frame)
    return frames


async def test_a_lost_publish_reaches_quiet_connections_within_the_bound(settings):
    """A message committed but never published (its publisher died between
    the two), with nothing after it: connections in its room are sent it
    within DELIVERY_BOUND_SECONDS, and only it; another room hears nothing."""
    settings.DELIVERY_BOUND_SECONDS = 1.0
    settings.HUB_PROBE_SECONDS = 0.05
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    side = await database_sync_to_async(RoomFactory)(slug="side")
    for n in range(3):  # history the connections were told of at welcome
        await database_sync_to_async(services.store_message)(
            room=lobby, author=None, body=f"old {n}", client_id=None
        )
    async with connected("lobby") as quiet, connected("side") as elsewhere:
        lost = await database_sync_to_async(services.store_message)(
            room=lobby, author=None, body="never published", client_id=None
        )
        started = time.monotonic()
        frame = await quiet.receive_json_from(timeout=5)
        waited = time.monotonic() - started
        assert frame == lost.message
        assert waited < settings.DELIVERY_BOUND_SECONDS + 0.5, waited
        assert await messages_within(quiet, 1.0) == []
        # A fence: a catch-up sent to the wrong room would come before it.
        fence = await services.post_message(room=side, author=None, body="fence")
        assert await messages_through(elsewhere, fence.message) == [fence.message]
        assert get_hub().tail_catch_ups == 1


async def test_published_messages_cause_no_tail_catch_up(settings):
    settings.DELIVERY_BOUND_SECONDS = 1.0
    settings.HUB_PROBE_SECONDS = 0.05
    await database_sync_to_async(RoomFactory)(slug="lobby")
    async with connected("lobby") as ws:
        room = await database_sync_to_async(Room.objects.get)(slug="lobby")
        result = await services.post_message(room=room, author=None, body="hi")
        assert await ws.receive_json_from() == result.message
        # Three checks' worth: each reads last_seq 1, which ws was sent.
        assert await messages_within(ws, 1.5) == []
        assert get_hub().tail_catch_ups == 0


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_shared_frames_are_valid_websocket_text_frames(size):
    """The frame written once for many sockets parses as a client would."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from core.servers.backpressure import text_frame

    payload = ("é" * size).encode()[:size]
    reader = StreamReader()
    reader.feed_data(text_frame(payload))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)
