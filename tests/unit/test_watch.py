"""Watching rooms (?watch=1): the rooms, activity, read and room frames
(docs/protocol.md, section 18), through the real ASGI application."""

import asyncio
import contextlib
import threading

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from backend.asgi import application
from core import reads, services
from core.fanout import get_hub
from core.models import Room
from harness.waiting import async_wait_until
from tests.factories import RoomFactory, UserFactory, private_room
from tests.unit.conftest import connected, receive_until, send_json, token_for
from tests.unit.sse_client import Stream

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def rooms(alice, bob):
    """lobby and ops (public), secret (bob's, alice a member)."""
    await database_sync_to_async(RoomFactory)(slug="lobby", name="Lobby")
    await database_sync_to_async(RoomFactory)(slug="ops", name="Ops")
    await database_sync_to_async(private_room)(bob, alice, slug="secret")


async def post(slug: str, author, body: str) -> int:
    room = await database_sync_to_async(Room.objects.get)(slug=slug)
    result = await services.post_message(room=room, author=author, body=body)
    return result.message["seq"]


@contextlib.asynccontextmanager
async def watching(slug: str, user, query: str = "watch=1"):
    """A watching connection, read through its first rooms frame."""
    async with connected(slug, token=await token_for(user), query=query) as ws:
        welcome = await ws.receive_json_from(timeout=5)
        assert welcome["type"] == "welcome"
        rooms, skipped = await receive_until(ws, lambda f: f["type"] == "rooms")
        assert [f["type"] for f in skipped] == ["presence"]
        ws.first_rooms = rooms
        yield ws


def of_type(kind: str):
    return lambda frame: frame["type"] == kind


async def test_a_watching_connection_gets_every_visible_room_with_counts(
    rooms, alice, bob
):
    await post("ops", bob, "hi @alice")
    await post("ops", alice, "mine")
    await post("secret", bob, "psst")
    async with watching("lobby", alice) as ws:
        assert ws.first_rooms == {
            "type": "rooms",
            "rooms": [
                {"slug": "lobby", "name": "Lobby", "is_private": False,
                 "last_seq": 0, "read_seq": 0, "unread": 0, "mentions": 0},
                {"slug": "ops", "name": "Ops", "is_private": False,
                 "last_seq": 2, "read_seq": 0, "unread": 1, "mentions": 1},
                {"slug": "secret", "name": "Secret", "is_private": True,
                 "last_seq": 1, "read_seq": 0, "unread": 1, "mentions": 0},
            ],
        }  # fmt: skip


async def test_the_rooms_frame_is_cut_at_the_limit(rooms, alice, settings):
    settings.WATCH_ROOMS_LIMIT = 2
    async with watching("lobby", alice) as ws:
        assert [r["slug"] for r in ws.first_rooms["rooms"]] == ["lobby", "ops"]
        assert ws.first_rooms["more"] is True


async def test_activity_comes_for_other_rooms_and_not_for_its_own(rooms, alice, bob):
    async with watching("lobby", alice) as ws:
        await post("lobby", bob, "in my room")
        message = await ws.receive_json_from(timeout=5)
        assert (message["type"], message["body"]) == ("message", "in my room")
        seq = await post("ops", bob, "hey @Alice and @carol.")
        activity = await ws.receive_json_from(timeout=5)
        assert activity == {
            "type": "activity",
            "room": "ops",
            "seq": seq,
            "kind": "message",
            "author": "bob",
            "mentions": ["alice", "carol"],
            "target": None,
        }
        room = await database_sync_to_async(Room.objects.get)(slug="ops")
        change = await services.change_message(room=room, actor=bob, seq=seq, body=None)
        deleted = await ws.receive_json_from(timeout=5)
        assert deleted == {
            "type": "activity",
            "room": "ops",
            "seq": change.message["seq"],
            "kind": "delete",
            "author": None,
            "mentions": [],
            "target": seq,
        }
        assert await ws.receive_nothing(timeout=0.2)


async def test_a_connection_that_does_not_watch_costs_no_watcher(rooms, alice, bob):
    async with connected("lobby", token=await token_for(alice)) as ws:
        assert not any(get_hub().watchers.values())
        await post("ops", bob, "elsewhere")
        await post("lobby", bob, "here")
        message = await ws.receive_json_from(timeout=5)
        assert message["body"] == "here"  # nothing about ops came first
        assert await ws.receive_nothing(timeout=0.2)


async def test_no_activity_for_a_private_room_after_removal(rooms, alice, bob):
    async with watching("lobby", alice) as ws:
        await post("secret", bob, "before")
        before, _ = await receive_until(ws, of_type("activity"))
        assert before["room"] == "secret"
        secret = await database_sync_to_async(Room.objects.get)(slug="secret")
        await database_sync_to_async(services.remove_member)(
            room=secret, actor=bob, username="alice"
        )
        # Read again at once: the rooms frame no longer lists it.
        fresh, _ = await receive_until(ws, of_type("rooms"))
        assert "secret" not in [r["slug"] for r in fresh["rooms"]]
        await post("secret", bob, "after")
        await post("ops", bob, "fence")
        activity, skipped = await receive_until(ws, of_type("activity"))
        assert activity["room"] == "ops"
        assert all(f.get("room") != "secret" for f in skipped), skipped


@pytest.mark.parametrize("slug", ["ops", "secret"])
async def test_a_deleted_room_leaves_the_watchers_rooms_at_once(
    rooms, alice, bob, slug
):
    async with watching("lobby", alice) as ws:
        listed = [r["slug"] for r in ws.first_rooms["rooms"]]
        assert listed == ["lobby", "ops", "secret"]
        await database_sync_to_async(services.delete_rooms)(
            Room.objects.filter(slug=slug)
        )
        fresh, _ = await receive_until(ws, of_type("rooms"))
        assert [r["slug"] for r in fresh["rooms"]] == [
            name for name in listed if name != slug
        ]


@pytest.mark.parametrize("counted", [True, False], ids=["counted", "after-the-count"])
async def test_activity_during_a_reread_comes_once_after_the_rooms_frame(
    rooms, alice, bob, monkeypatch, counted
):
    """A message in a watched room while the rooms are read again is held
    until the ``rooms`` frame, then sent unless that frame counted it.

    The message is stored inside the re-read (on its database thread),
    before or after the count; its event is published while the read waits.
    """
    reading, go_on = threading.Event(), threading.Event()
    stored = []
    real = reads.watched_rooms

    def store() -> None:
        ops = Room.objects.get(slug="ops")
        stored.append(
            services.store_message(room=ops, author=bob, body="while", client_id=None)
        )

    def watched_rooms(user, limit):
        if counted:
            store()
        found = real(user, limit)
        if not counted:
            store()
        reading.set()
        go_on.wait(timeout=10)
        return found

    ops_id = (await database_sync_to_async(Room.objects.get)(slug="ops")).pk
    async with watching("lobby", alice) as ws:
        monkeypatch.setattr(reads, "watched_rooms", watched_rooms)
        await services.publish(services.user_group(alice.pk), {"type": "rooms.changed"})
        await async_wait_until(reading.is_set, timeout=5, message="the re-read")
        [result] = stored
        seq = result.message["seq"]
        [watcher] = get_hub().watchers[services.room_group(ops_id)]
        await services.publish_message(ops_id, result.message)
        await async_wait_until(lambda: watcher.watch_held, timeout=5, message="held")
        go_on.set()
        fresh, before = await receive_until(ws, of_type("rooms"))
        assert not [f for f in before if f["type"] == "activity"]  # held
        [entry] = [r for r in fresh["rooms"] if r["slug"] == "ops"]
        assert entry["last_seq"] == (seq if counted else seq - 1)
        fence = await post("ops", bob, "after")
        frames = []
        while not frames or frames[-1].get("seq") != fence:
            frames.append(await ws.receive_json_from(timeout=5))
        sent = [(f["room"], f["seq"]) for f in frames if f["type"] == "activity"]
        assert sent == ([] if counted else [("ops", seq)]) + [("ops", fence)]


async def test_read_reaches_the_users_other_tabs_and_nobody_else(rooms, alice, bob):
    for n in range(3):
        await post("ops", bob, f"m{n}")
    async with (
        watching("lobby", alice) as tab1,
        watching("ops", alice) as tab2,
        watching("lobby", bob) as other,
        connected("secret", token=await token_for(alice)) as plain,
    ):
        await send_json(tab2, {"type": "read", "seq": 2})
        state = {"room": "ops", "read_seq": 2, "unread": 1, "mentions": 0}
        answer, _ = await receive_until(tab2, of_type("read"))
        assert answer == {"type": "read", **state}
        moved, _ = await receive_until(tab1, of_type("read"))
        assert moved == {"type": "read", **state}
        # Nothing for another user, or for a tab that does not watch.
        await post("ops", alice, "fence")
        fence, skipped = await receive_until(other, of_type("activity"))
        assert fence["author"] == "alice"
        assert not [f for f in skipped if f["type"] == "read"]
        await post("secret", bob, "fence")
        fence, skipped = await receive_until(plain, of_type("message"))
        assert not [f for f in skipped if f["type"] == "read"]


async def test_bad_watch_and_bad_read_are_errors_that_leave_the_socket_open(
    rooms, alice
):
    token = await token_for(alice)
    async with connected("lobby", token=token, query="watch=yes") as ws:
        welcome = await ws.receive_json_from(timeout=5)
        assert welcome["type"] == "welcome"
        error = await ws.receive_json_from(timeout=5)
        assert (error["type"], error["code"]) == ("error", "bad_frame")
        assert "watch" in error["detail"]
        for seq in (None, True, -1, "2", 1.5):
            bad = {"type": "read", "seq": seq} if seq is not None else {"type": "read"}
            await send_json(ws, bad)
            error, _ = await receive_until(ws, of_type("error"))
            assert error["code"] == "bad_frame", bad
        await send_json(ws, {"type": "ping"})
        _, skipped = await receive_until(ws, of_type("pong"))
        assert "rooms" not in [f["type"] for f in skipped]  # it does not watch


async def test_anonymous_visitors_may_ask_but_do_not_watch(rooms):
    async with connected("lobby", query="watch=1") as ws:
        await ws.receive_json_from(timeout=5)  # welcome
        await ws.receive_json_from(timeout=5)  # presence
        await send_json(ws, {"type": "read", "seq": 0})
        error = await ws.receive_json_from(timeout=5)
        assert error["code"] == "unauthenticated"


async def test_room_changed_reaches_members_and_watchers(rooms, alice, bob):
    ops = await database_sync_to_async(Room.objects.get)(slug="ops")
    group = services.room_group(ops.pk)
    async with (
        watching("lobby", alice) as watcher,
        connected("ops", token=await token_for(bob)) as member,
    ):
        await get_channel_layer().group_send(
            group,
            {"type": "room.changed", "slug": "ops", "name": "Operations",
             "members": None, "group": group},
        )  # fmt: skip
        expected = {"type": "room", "slug": "ops", "name": "Operations"}
        assert (await receive_until(member, of_type("room")))[0] == expected
        assert (await receive_until(watcher, of_type("room")))[0] == expected
        secret = await database_sync_to_async(Room.objects.get)(slug="secret")
        await services.publish(
            services.room_group(secret.pk),
            {"type": "room.changed", "slug": "secret", "name": "Secret",
             "members": ["bob", "alice"]},
        )  # fmt: skip
        frame, _ = await receive_until(watcher, of_type("room"))
        assert frame == {
            "type": "room",
            "slug": "secret",
            "name": "Secret",
            "members": ["alice", "bob"],
        }


async def test_rooms_changed_sends_a_fresh_rooms_frame_and_watches_new_rooms(
    rooms, alice, bob
):
    async with watching("lobby", alice) as ws:
        await database_sync_to_async(private_room)(bob, alice, slug="new")
        await services.publish(services.user_group(alice.pk), {"type": "rooms.changed"})
        fresh, _ = await receive_until(ws, of_type("rooms"))
        assert "new" in [r["slug"] for r in fresh["rooms"]]
        await post("new", bob, "welcome")
        activity, _ = await receive_until(ws, of_type("activity"))
        assert activity["room"] == "new"


async def test_a_gap_reads_the_rooms_again_and_holds_activity_until_then(
    rooms, alice, bob
):
    async with watching("lobby", alice) as ws:
        hub = get_hub()
        hub._events_may_be_lost("a test")  # the epoch moves: access is stale
        await post("ops", bob, "during the gap")
        hub.lost_after_probe = None
        hub._catch_up_everyone()
        frame, skipped = await receive_until(ws, of_type("rooms"))
        assert "activity" not in [f["type"] for f in skipped]
        ops = next(r for r in frame["rooms"] if r["slug"] == "ops")
        assert ops["unread"] == 1  # counted, not sent live
        await post("ops", bob, "after")
        activity, _ = await receive_until(ws, of_type("activity"))
        assert activity["seq"] == 2


async def test_a_stream_watches_too(rooms, alice, bob):
    token = await token_for(alice)
    stream = Stream(
        application,
        "/sse/rooms/lobby/?watch=1",
        [(b"authorization", f"Token {token}".encode())],
    )
    await stream.open()
    try:
        frame, _ = await stream.until("rooms")
        assert [r["slug"] for r in frame["rooms"]] == ["lobby", "ops", "secret"]
        await post("ops", bob, "@alice over a stream")
        activity, _ = await stream.until("activity")
        assert activity["mentions"] == ["alice"]
        assert "_id" not in activity  # only messages of its own room have ids
    finally:
        with contextlib.suppress(Exception):
            await stream.close()


async def test_leaving_stops_watching(rooms, alice):
    async with watching("lobby", alice):
        assert any(get_hub().watchers.values())
    await asyncio.sleep(0.05)
    assert not any(get_hub().watchers.values())


async def test_two_users_one_process_one_group_per_room(rooms, alice, bob):
    carol = await database_sync_to_async(UserFactory)(username="carol")
    async with watching("lobby", alice), watching("lobby", carol):
        ops = await database_sync_to_async(Room.objects.get)(slug="ops")
        assert len(get_hub().watchers[services.room_group(ops.pk)]) == 2
