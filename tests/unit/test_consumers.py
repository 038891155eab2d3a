"""RoomConsumer through the real ASGI application (routing, origin, auth)."""

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from backend.asgi import application
from core import services
from core.auth import origin_allowed
from core.fanout import get_hub
from core.models import Membership, Message, Room
from core.presence import RoomRef, get_presence
from tests.factories import RoomFactory, private_room
from tests.unit.conftest import (
    connected,
    receive_until,
    refused,
    send_json,
    token_for,
    ws_path,
)

pytestmark = pytest.mark.django_db(transaction=True)

SERVER_FRAME_TYPES = {
    "welcome",
    "message",
    "replayed",
    "ack",
    "presence",
    "typing",
    "history",
    "pong",
    "error",
}


@database_sync_to_async
def stored(slug="lobby"):
    return list(
        Message.objects.filter(room__slug=slug)
        .order_by("seq")
        .values_list("seq", "author_name", "body", "client_id")
    )


@database_sync_to_async
def post(slug, body, author=None, client_id=None):
    room = Room.objects.get(slug=slug)
    return services.store_message(
        room=room, author=author, body=body, client_id=client_id
    ).message


@database_sync_to_async
def post_many(slug, count):
    room = Room.objects.get(slug=slug)
    for n in range(count):
        services.store_message(room=room, author=None, body=f"m{n}", client_id=None)


# --- handshake ---------------------------------------------------------------


async def test_anonymous_visitor_is_welcomed_read_only(lobby):
    communicator = WebsocketCommunicator(application, ws_path("lobby"))
    ok, _ = await communicator.connect()
    assert ok
    try:
        assert await communicator.receive_json_from() == {
            "type": "welcome",
            "room": "lobby",
            "user": None,
            "last_seq": 0,
        }
        presence = await communicator.receive_json_from()
        assert presence == {
            "type": "presence",
            "room": "lobby",
            "users": [],
            "total_users": 0,
            "anonymous": 1,
        }
    finally:
        await communicator.disconnect()


async def test_welcome_reports_last_seq_and_user(lobby, alice):
    await post("lobby", "one")
    await post("lobby", "two")
    communicator = WebsocketCommunicator(
        application,
        ws_path("lobby"),
        [(b"authorization", f"Token {await token_for(alice)}".encode())],
    )
    await communicator.connect()
    try:
        welcome = await communicator.receive_json_from()
        assert welcome == {
            "type": "welcome",
            "room": "lobby",
            "user": "alice",
            "last_seq": 2,
        }
    finally:
        await communicator.disconnect()


async def test_unknown_room_and_private_room_are_refused_alike(alice, bob):
    await database_sync_to_async(private_room)(alice, slug="secret")
    bob_token = await token_for(bob)
    unknown = await refused("no-such-room", token=bob_token)
    private = await refused("secret", token=bob_token)
    anonymous = await refused("secret")
    assert unknown == private == anonymous


async def test_member_joins_private_room(alice, bob):
    await database_sync_to_async(private_room)(alice, bob, slug="secret")
    async with connected("secret", token=await token_for(bob)) as ws:
        await send_json(ws, {"type": "ping"})
        assert await ws.receive_json_from() == {"type": "pong"}


async def test_invalid_token_is_refused_even_for_a_public_room(lobby):
    await refused("lobby", token="not-a-real-token")
    await refused("lobby", headers=[(b"authorization", b"Bearer abc")])


async def test_token_beats_the_session_cookie(lobby, alice, bob):
    from django.test import Client

    client = Client()
    await database_sync_to_async(client.force_login)(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    async with connected(
        "lobby", headers=[(b"cookie", cookie)], skip_greeting=False
    ) as ws:
        assert (await ws.receive_json_from())["user"] == "alice"
    headers = [
        (b"cookie", cookie),
        (b"authorization", f"Token {await token_for(bob)}".encode()),
    ]
    async with connected("lobby", headers=headers, skip_greeting=False) as ws:
        assert (await ws.receive_json_from())["user"] == "bob"


@pytest.mark.parametrize(
    "origin",
    [b"http://evil.example", b"null", b"http://localhost.evil.example", b"garbage"],
)
async def test_foreign_origin_is_refused(lobby, origin, caplog):
    await refused("lobby", headers=[(b"origin", origin)])
    assert origin.decode() in caplog.text


@pytest.mark.parametrize(
    "origin", [b"http://localhost:8080", b"https://127.0.0.1", b"http://[::1]:8080"]
)
async def test_allowed_origin_is_accepted(lobby, origin):
    async with connected("lobby", headers=[(b"origin", origin)]) as ws:
        await send_json(ws, {"type": "ping"})
        assert await ws.receive_json_from() == {"type": "pong"}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://chat.example.com", True),
        ("http://chat.example.com:8443", True),  # any scheme and port
        ("https://CHAT.Example.COM", True),  # hosts are case-insensitive
        ("https://chat.example.com.", False),  # a trailing dot is another name
        ("https://evilchat.example.com", False),  # a suffix is not a match
        ("https://chat.example.com.evil.net", False),
        ("https://sub.chat.example.com", False),  # no leading dot: no subdomains
        ("https://example.com", False),
        ("https://xn--chat-exmple-lcb.com", False),  # IDN look-alike
        ("https://chat.exämple.com", False),
        ("https://team.example.org", True),  # ".example.org" covers subdomains
        ("https://example.org", True),
        ("https://a.b.example.org", True),
        ("https://badexample.org", False),
        ("chat.example.com", False),  # no scheme: no host
        ("https://", False),
        ("https://[::1", False),  # unparseable
    ],
)
def test_the_origin_policy_matches_whole_hosts_only(settings, origin, allowed):
    """DJANGO_ALLOWED_HOSTS entries match as Django matches Host headers:
    the whole name, or, with a leading dot, the name and its subdomains."""
    settings.ALLOWED_HOSTS = ["chat.example.com", ".example.org"]
    assert origin_allowed(origin) is allowed


async def test_a_path_outside_the_routes_is_refused(lobby):
    communicator = WebsocketCommunicator(application, "/ws/rooms/Bad_Slug/")
    accepted, _ = await communicator.connect()
    assert not accepted


# --- send, ack, message ------------------------------------------------------


async def test_send_is_acked_and_delivered_to_everyone_in_the_room(lobby, alice, bob):
    async with (
        connected("lobby", token=await token_for(alice)) as alice_ws,
        connected("lobby", token=await token_for(bob)) as bob_ws,
    ):
        await send_json(alice_ws, {"type": "send", "body": "hello", "client_id": "c1"})
        # The sender's ack and its own copy may come in either order.
        ack, before = await receive_until(alice_ws, lambda f: f["type"] == "ack")
        assert ack == {"type": "ack", "client_id": "c1", "seq": 1}
        own = [f for f in before if f["type"] == "message"]
        for ws in (alice_ws, bob_ws):
            if ws is alice_ws and own:
                message = own[0]
            else:
                message, _ = await receive_until(ws, lambda f: f["type"] == "message")
            assert message["room"] == "lobby"
            assert (message["seq"], message["author"], message["body"]) == (
                1,
                "alice",
                "hello",
            )
            assert message["client_id"] == "c1"
            assert message["sent_at"].endswith("Z")
            assert len(message["sent_at"]) == 27
    assert await stored() == [(1, "alice", "hello", "c1")]


async def test_repeated_client_id_is_acked_with_original_seq(lobby, alice, bob):
    async with (
        connected("lobby", token=await token_for(alice)) as alice_ws,
        connected("lobby", token=await token_for(bob)) as bob_ws,
    ):
        await send_json(alice_ws, {"type": "send", "body": "first", "client_id": "dup"})
        await receive_until(alice_ws, lambda f: f["type"] == "ack")
        await receive_until(bob_ws, lambda f: f["type"] == "message")
        await send_json(
            alice_ws, {"type": "send", "body": "changed", "client_id": "dup"}
        )
        ack, _ = await receive_until(alice_ws, lambda f: f["type"] == "ack")
        assert ack == {"type": "ack", "client_id": "dup", "seq": 1}
        # A fence: a rebroadcast of the resend would reach bob before it.
        await send_json(alice_ws, {"type": "send", "body": "fence", "client_id": "f"})
        frame, _ = await receive_until(bob_ws, lambda f: f["type"] != "presence")
        assert (frame["type"], frame["seq"], frame["body"]) == ("message", 2, "fence")
    assert await stored() == [(1, "alice", "first", "dup"), (2, "alice", "fence", "f")]


async def test_same_client_id_from_another_author_is_a_new_message(lobby, alice, bob):
    async with (
        connected("lobby", token=await token_for(alice)) as alice_ws,
        connected("lobby", token=await token_for(bob)) as bob_ws,
    ):
        for ws in (alice_ws, bob_ws):
            await send_json(ws, {"type": "send", "body": "x", "client_id": "same"})
            await receive_until(ws, lambda f: f["type"] == "ack")
    assert [row[:2] for row in await stored()] == [(1, "alice"), (2, "bob")]


async def test_body_is_stored_verbatim(lobby, alice):
    body = "  spaced\n\ttabbed  😀 "
    async with connected("lobby", token=await token_for(alice)) as ws:
        await send_json(ws, {"type": "send", "body": body})
        ack, _ = await receive_until(ws, lambda f: f["type"] == "ack")
        assert ack["client_id"] is None
    assert (await stored())[0][2] == body


async def test_anonymous_send_and_typing_are_unauthenticated(lobby):
    async with connected("lobby") as ws:
        await send_json(ws, {"type": "send", "body": "hi", "client_id": "k"})
        error = await ws.receive_json_from()
        assert (error["code"], error["client_id"]) == ("unauthenticated", "k")
        await send_json(ws, {"type": "typing"})
        assert (await ws.receive_json_from())["code"] == "unauthenticated"
    assert await stored() == []


async def test_sends_beyond_the_burst_are_rate_limited_and_not_stored(
    lobby, alice, settings
):
    settings.SEND_BURST = 3
    settings.SEND_RATE_PER_SECOND = 0.5
    async with connected("lobby", token=await token_for(alice)) as ws:
        for n in range(4):
            await send_json(ws, {"type": "send", "body": f"m{n}", "client_id": f"c{n}"})
        frames = []
        while len([f for f in frames if f["type"] in {"ack", "error"}]) < 4:
            frames.append(await ws.receive_json_from())
        error = next(f for f in frames if f["type"] == "error")
        assert (error["code"], error["client_id"]) == ("rate_limited", "c3")
        assert 0 < error["retry_after_ms"] <= 2000
        await send_json(ws, {"type": "ping"})
        assert (await receive_until(ws, lambda f: f["type"] == "pong"))[0]
    assert [row[2] for row in await stored()] == ["m0", "m1", "m2"]


async def test_posting_after_losing_membership_is_forbidden(alice, bob):
    room = await database_sync_to_async(private_room)(alice, bob, slug="secret")
    async with connected("secret", token=await token_for(bob)) as ws:
        # Removed without the revocation event (an update sends no signal):
        # the frame races the close.
        await database_sync_to_async(
            lambda: Membership.objects.filter(room=room, user=bob).update(
                room=RoomFactory(slug="elsewhere")
            )
        )()
        await send_json(ws, {"type": "send", "body": "still here?", "client_id": "r"})
        error = await ws.receive_json_from()
        assert (error["code"], error["client_id"]) == ("forbidden", "r")
        await send_json(ws, {"type": "history"})
        assert (await ws.receive_json_from())["code"] == "forbidden"
    assert await stored("secret") == []


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{nope", "bad_json"),
        ("[]", "bad_json"),
        ('{"type":"x"}', "unknown_type"),
        ('{"body":"x"}', "bad_frame"),
        ('{"type":"send","body":"' + "y" * 4001 + '"}', "too_long"),
        ('{"type":"history","after":1.5}', "bad_frame"),
        ('{"type":"send","body":"\\ud83d"}', "bad_frame"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays(
    lobby, alice, text, code
):
    async with connected("lobby", token=await token_for(alice)) as ws:
        await ws.send_to(text_data=text)
        error = await ws.receive_json_from()
        assert error["type"] == "error"
        assert error["code"] == code
        assert "Traceback" not in error["detail"]
        await send_json(ws, {"type": "ping"})
        assert await ws.receive_json_from() == {"type": "pong"}
    assert await stored() == []


async def test_binary_frame_is_bad_frame(lobby):
    async with connected("lobby") as ws:
        await ws.send_to(bytes_data=b'{"type":"ping"}')
        assert (await ws.receive_json_from())["code"] == "bad_frame"


async def test_frame_over_64_kib_closes_with_4009_and_stores_nothing(lobby, alice):
    async with connected("lobby", token=await token_for(alice)) as ws:
        padding = "x" * (64 * 1024)
        await ws.send_to(
            text_data=json.dumps({"type": "send", "body": "hi", "pad": padding})
        )
        assert await ws.receive_output(timeout=2) == {
            "type": "websocket.close",
            "code": 4009,
        }
    assert await stored() == []


async def test_frame_of_exactly_64_kib_is_parsed(lobby, alice):
    async with connected("lobby", token=await token_for(alice)) as ws:
        frame = '{"type":"ping","pad":"' + "é" * 10 + '"}'
        padding = 64 * 1024 - len(frame.encode())
        frame = frame[:-2] + "x" * padding + '"}'
        assert len(frame.encode()) == 64 * 1024
        await ws.send_to(text_data=frame)
        assert await ws.receive_json_from() == {"type": "pong"}


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(texts=st.lists(st.text(max_size=200), min_size=1, max_size=8))
def test_any_text_frame_gets_a_valid_server_frame(lobby, alice, texts):
    async def exchange():
        async with connected("lobby", token=await token_for(alice)) as ws:
            for text in texts:
                # send_input: the communicator's send_to refuses "".
                await ws.send_input({"type": "websocket.receive", "text": text})
                frame = await ws.receive_json_from(timeout=5)
                while frame["type"] in {"message", "presence"}:
                    frame = await ws.receive_json_from(timeout=5)
                assert frame["type"] in {"error", "ack", "pong", "history"}
            await send_json(ws, {"type": "ping"})
            await receive_until(ws, lambda f: f["type"] == "pong")

    async_to_sync(exchange)()


# --- history and resume ------------------------------------------------------


async def history(ws, **bounds):
    await send_json(ws, {"type": "history", **bounds})
    frame, _ = await receive_until(ws, lambda f: f["type"] == "history")
    return [m["seq"] for m in frame["messages"]], frame["has_more"]


async def test_history_pages_follow_the_range_rules(lobby, settings):
    settings.HISTORY_BURST = 20
    await post_many("lobby", 10)
    async with connected("lobby") as ws:
        assert await history(ws) == (list(range(1, 11)), False)
        assert await history(ws, limit=3) == ([8, 9, 10], True)
        assert await history(ws, after=2, limit=3) == ([3, 4, 5], True)
        assert await history(ws, after=7, limit=3) == ([8, 9, 10], False)
        assert await history(ws, before=5, limit=3) == ([2, 3, 4], True)
        assert await history(ws, before=4, limit=3) == ([1, 2, 3], False)
        assert await history(ws, after=2, before=9, limit=3) == ([3, 4, 5], True)
        assert await history(ws, after=5, before=9, limit=3) == ([6, 7, 8], False)
        assert await history(ws, after=10) == ([], False)


async def test_history_is_rate_limited(lobby, settings):
    settings.HISTORY_BURST = 2
    settings.HISTORY_RATE_PER_SECOND = 0.5
    async with connected("lobby") as ws:
        for _ in range(3):
            await send_json(ws, {"type": "history"})
        frames = [await ws.receive_json_from() for _ in range(3)]
        assert [f["type"] for f in frames] == ["history", "history", "error"]
        assert frames[2]["code"] == "rate_limited"


async def resume(slug, after, token=None):
    """Connect with ?after= and return (welcome, replayed seqs, replayed, ws)."""
    communicator = WebsocketCommunicator(
        application,
        ws_path(slug, f"after={after}"),
        [(b"authorization", f"Token {token}".encode())] if token else [],
    )
    ok, _ = await communicator.connect()
    assert ok
    welcome = await communicator.receive_json_from()
    seqs = []
    while True:
        frame = await communicator.receive_json_from()
        if frame["type"] == "replayed":
            break
        assert frame["type"] == "message"
        seqs.append(frame["seq"])
    presence = await communicator.receive_json_from()
    assert presence["type"] == "presence"
    return welcome, seqs, frame, communicator


@pytest.mark.parametrize(
    ("after", "expected"), [(0, [1, 2, 3, 4, 5]), (3, [4, 5]), (5, []), (99, [])]
)
async def test_resume_replays_everything_after_the_given_seq(lobby, after, expected):
    await post_many("lobby", 5)
    welcome, seqs, replayed, ws = await resume("lobby", after)
    await ws.disconnect()
    assert welcome["last_seq"] == 5
    assert seqs == expected
    assert replayed == {
        "type": "replayed",
        "after": after,
        "count": len(expected),
        "complete": True,
    }


async def test_resume_past_the_replay_limit_is_incomplete(lobby):
    await post_many("lobby", 1003)
    _welcome, seqs, replayed, ws = await resume("lobby", 1)
    try:
        assert seqs == list(range(2, 1002))
        assert replayed == {
            "type": "replayed",
            "after": 1,
            "count": 1000,
            "complete": False,
        }
        assert await history(ws, after=1001) == ([1002, 1003], False)
    finally:
        await ws.disconnect()


async def test_malformed_after_is_reported_after_welcome_and_nothing_is_replayed(lobby):
    await post_many("lobby", 2)
    communicator = WebsocketCommunicator(application, ws_path("lobby", "after=-4"))
    await communicator.connect()
    try:
        frames = [await communicator.receive_json_from() for _ in range(3)]
        assert [f["type"] for f in frames] == ["welcome", "error", "presence"]
        assert frames[1]["code"] == "bad_frame"
        # A fence: a replay, had one started, would come before a live message.
        fence = await services.post_message(room=lobby, author=None, body="fence")
        frame, _ = await receive_until(communicator, lambda f: f["type"] != "presence")
        assert frame == fence.message
        assert frame["seq"] == 3
    finally:
        await communicator.disconnect()


async def test_live_messages_already_replayed_are_not_sent_twice(lobby):
    await post_many("lobby", 3)
    _, seqs, _, ws = await resume("lobby", 0)
    try:
        assert seqs == [1, 2, 3]
        # A publish that lands after the replay read it: dropped by seq.
        late = await database_sync_to_async(
            lambda: services.frame_for(
                Message.objects.get(room__slug="lobby", seq=2), "lobby"
            )
        )()
        await services.publish_message(lobby.pk, late)
        # A fence: the late copy, had it been sent, would come before this.
        fresh = await post("lobby", "fresh")
        await services.publish_message(lobby.pk, fresh)
        frame, _ = await receive_until(ws, lambda f: f["type"] != "presence")
        assert frame == fresh
    finally:
        await ws.disconnect()


async def test_messages_sent_during_resume_arrive_once_in_order(lobby, alice, settings):
    settings.SEND_BURST = 100  # 30 quick sends; the default burst is 20
    await post_many("lobby", 200)
    token = await token_for(alice)
    async with connected("lobby", token=token) as sender:

        async def send_more():
            for n in range(30):
                await send_json(
                    sender, {"type": "send", "body": f"live{n}", "client_id": f"l{n}"}
                )
                await receive_until(sender, lambda f: f["type"] == "ack")

        sending = asyncio.ensure_future(send_more())
        _, seqs, _, ws = await resume("lobby", 0, token=token)
        await sending
        try:
            while seqs[-1] < 230:
                frame = await ws.receive_json_from()
                if frame["type"] == "message":
                    seqs.append(frame["seq"])
            assert seqs == list(range(1, 231))
        finally:
            await ws.disconnect()


# --- typing, ping, presence --------------------------------------------------


async def test_typing_is_relayed_to_others_at_most_every_three_seconds(
    lobby, alice, bob
):
    async with (
        connected("lobby", token=await token_for(alice)) as alice_ws,
        connected("lobby", token=await token_for(bob)) as bob_ws,
    ):
        await send_json(alice_ws, {"type": "typing"})
        frame, _ = await receive_until(bob_ws, lambda f: f["type"] == "typing")
        assert frame == {"type": "typing", "user": "alice"}
        await send_json(alice_ws, {"type": "typing"})
        await send_json(alice_ws, {"type": "ping"})
        assert (
            await receive_until(alice_ws, lambda f: f["type"] in {"pong", "typing"})
        )[0] == {"type": "pong"}
        await send_json(bob_ws, {"type": "ping"})
        _pong, skipped = await receive_until(bob_ws, lambda f: f["type"] == "pong")
        assert not [f for f in skipped if f["type"] == "typing"]


async def test_typing_is_relayed_again_once_the_interval_has_passed(
    lobby, alice, bob, settings
):
    settings.TYPING_INTERVAL_SECONDS = 0.3
    async with (
        connected("lobby", token=await token_for(alice)) as alice_ws,
        connected("lobby", token=await token_for(bob)) as bob_ws,
    ):
        for _ in range(3):  # each notice once the last interval is over
            await send_json(alice_ws, {"type": "typing"})
            frame, _ = await receive_until(bob_ws, lambda f: f["type"] == "typing")
            assert frame == {"type": "typing", "user": "alice"}
            # Typing goes on: the next notice is due an interval later.
            await asyncio.sleep(settings.TYPING_INTERVAL_SECONDS + 0.05)


async def test_typing_in_one_room_does_not_hold_back_typing_in_another(
    lobby, alice, bob
):
    """The interval is per user and room: alice types in the lobby, then at
    once in another room, and bob hears both."""
    await database_sync_to_async(RoomFactory)(slug="side")
    alice_token, bob_token = await token_for(alice), await token_for(bob)
    async with (
        connected("lobby", token=alice_token) as alice_lobby,
        connected("side", token=alice_token) as alice_side,
        connected("lobby", token=bob_token) as bob_lobby,
        connected("side", token=bob_token) as bob_side,
    ):
        await send_json(alice_lobby, {"type": "typing"})
        frame, _ = await receive_until(bob_lobby, lambda f: f["type"] == "typing")
        assert frame == {"type": "typing", "user": "alice"}
        await send_json(alice_side, {"type": "typing"})
        frame, _ = await receive_until(bob_side, lambda f: f["type"] == "typing")
        assert frame == {"type": "typing", "user": "alice"}


async def test_presence_lists_users_and_updates_when_someone_joins(lobby, alice, bob):
    async with connected("lobby", token=await token_for(alice)) as alice_ws:
        async with connected(
            "lobby", token=await token_for(bob), skip_greeting=False
        ) as bob_ws:
            await bob_ws.receive_json_from()
            joined = await bob_ws.receive_json_from()
            assert joined["users"] == ["alice", "bob"]
            update, _ = await receive_until(
                alice_ws,
                lambda f: f["type"] == "presence" and f["users"] == ["alice", "bob"],
            )
            assert update["total_users"] == 2
        left, _ = await receive_until(
            alice_ws, lambda f: f["type"] == "presence" and f["users"] == ["alice"]
        )
        assert left["anonymous"] == 0


async def test_a_leave_while_presence_is_being_published_is_published_next(
    monkeypatch,
):
    """The broadcast awaits the store and the channel layer; a leave in the
    meantime must not be taken for already published."""
    from core import presence as presence_module

    presence = presence_module.Presence()
    presence.store = presence_module.MemoryStore()  # this test's alone
    room = RoomRef(1, "lobby")
    await presence.join(room, "alice", "c1")
    await presence.join(room, "bob", "c2")
    sent = []
    real_publish = presence_module.publish

    async def publish_as_bob_leaves(group, event):
        sent.append(event["frame"]["users"])
        if len(sent) == 1:
            await presence.leave(room, "bob", "c2")
        await real_publish(group, event)

    monkeypatch.setattr(presence_module, "publish", publish_as_bob_leaves)
    await presence._broadcast()
    presence.store.throttle.clear()  # the next round, a broadcast interval on
    await presence._broadcast()
    assert sent == [["alice", "bob"], ["alice"]]
    presence.task.cancel()


async def test_two_connections_of_one_user_count_once(lobby, alice):
    token = await token_for(alice)
    async with (
        connected("lobby", token=token),
        connected("lobby", token=token, skip_greeting=False) as second,
    ):
        await second.receive_json_from()
        presence = await second.receive_json_from()
        assert (presence["users"], presence["total_users"]) == (["alice"], 1)


# --- access changes and shutdown ---------------------------------------------


async def test_removed_member_is_closed_with_4403_and_refused_after(alice, bob):
    room = await database_sync_to_async(private_room)(alice, bob, slug="secret")
    bob_token = await token_for(bob)
    async with (
        connected("secret", token=bob_token) as bob_ws,
        connected("secret", token=await token_for(alice)) as alice_ws,
    ):
        await database_sync_to_async(services.remove_member)(
            room=room, actor=alice, username="bob"
        )
        assert await bob_ws.receive_output(timeout=2) == {
            "type": "websocket.close",
            "code": 4403,
        }
        await send_json(alice_ws, {"type": "ping"})
        assert (await receive_until(alice_ws, lambda f: f["type"] == "pong"))[0]
    await refused("secret", token=bob_token)


async def test_a_removal_closes_that_rooms_connections_and_no_other(alice, bob):
    """The revocation names one room: the member's connection to another
    room, and to a public one, stay open and keep receiving."""
    secret = await database_sync_to_async(private_room)(alice, bob, slug="secret")
    await database_sync_to_async(private_room)(alice, bob, slug="other")
    await database_sync_to_async(RoomFactory)(slug="lobby")
    bob_token = await token_for(bob)
    async with (
        connected("secret", token=bob_token) as removed_ws,
        connected("other", token=bob_token) as other_ws,
        connected("lobby", token=bob_token) as lobby_ws,
        connected("other", token=await token_for(alice)) as alice_ws,
    ):
        await database_sync_to_async(services.remove_member)(
            room=secret, actor=alice, username="bob"
        )
        assert await removed_ws.receive_output(timeout=2) == {
            "type": "websocket.close",
            "code": 4403,
        }
        await send_json(alice_ws, {"type": "send", "body": "still", "client_id": "s"})
        message, _ = await receive_until(other_ws, lambda f: f["type"] == "message")
        assert message["body"] == "still"
        for ws in (other_ws, lobby_ws):
            await send_json(ws, {"type": "ping"})
            assert (await receive_until(ws, lambda f: f["type"] == "pong"))[0]
    await refused("secret", token=bob_token)


async def test_password_change_closes_the_users_sockets_and_revokes_tokens(
    lobby, alice
):
    token = await token_for(alice)
    async with connected("lobby", token=token) as ws:

        def change_password():
            user = get_user_model().objects.get(username="alice")
            user.set_password("a-brand-new-password")
            user.save()

        await database_sync_to_async(change_password)()
        assert await ws.receive_output(timeout=2) == {
            "type": "websocket.close",
            "code": 4403,
        }
    await refused("lobby", token=token)


async def test_logout_closes_that_sessions_sockets_only(lobby, alice):
    from django.test import Client

    session_client = Client()
    await database_sync_to_async(session_client.force_login)(alice)
    cookie = f"sessionid={session_client.cookies['sessionid'].value}".encode()
    async with (
        connected("lobby", headers=[(b"cookie", cookie)]) as session_ws,
        connected("lobby", token=await token_for(alice)) as token_ws,
    ):
        response = await database_sync_to_async(session_client.post)(
            "/accounts/logout/"
        )
        assert response.status_code == 302
        assert await session_ws.receive_output(timeout=2) == {
            "type": "websocket.close",
            "code": 4403,
        }
        await send_json(token_ws, {"type": "ping"})
        assert (await receive_until(token_ws, lambda f: f["type"] == "pong"))[0]


async def test_cancelled_consumer_closes_with_4012_and_leaves_presence(
    lobby, alice, bob, settings
):
    """A shutdown says 4012, and over how long to spread the reconnects:
    this process's connections (two) at the rate the fleet absorbs."""
    settings.SHUTDOWN_RECONNECTS_PER_SECOND = 0.8
    alice_ws = WebsocketCommunicator(
        application,
        ws_path("lobby"),
        [(b"authorization", f"Token {await token_for(alice)}".encode())],
    )
    await alice_ws.connect()
    await alice_ws.receive_json_from()
    await alice_ws.receive_json_from()
    async with connected("lobby", token=await token_for(bob)) as bob_ws:
        alice_ws.future.cancel()
        assert await alice_ws.receive_output(timeout=2) == {
            "type": "websocket.close",
            "code": 4012,
            "reason": "retry_window_ms=2500",
        }
        update, _ = await receive_until(
            bob_ws, lambda f: f["type"] == "presence" and f["users"] == ["bob"]
        )
        assert update["total_users"] == 1


async def test_published_events_survive_serialization(lobby, alice):
    """The in-memory layer only copies; Redis serializes: events must be JSON."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(services.room_group(lobby.pk), channel)
    async with connected("lobby", token=await token_for(alice)) as ws:
        await send_json(ws, {"type": "send", "body": "json?", "client_id": "j"})
        await send_json(ws, {"type": "typing"})
        events = [await layer.receive(channel) for _ in range(2)]
    for event in events:
        assert json.loads(json.dumps(event)) == event


async def test_a_frame_the_server_cannot_complete_gets_internal_error(
    lobby, alice, monkeypatch
):
    async def database_down(**kwargs):
        raise ConnectionError("database is down")

    monkeypatch.setattr(services, "post_message", database_down)
    async with connected("lobby", token=await token_for(alice)) as ws:
        await send_json(ws, {"type": "send", "body": "hi", "client_id": "retry-me"})
        error = await ws.receive_json_from()
        assert (error["code"], error["client_id"]) == ("internal_error", "retry-me")
        await send_json(ws, {"type": "ping"})
        assert await ws.receive_json_from() == {"type": "pong"}


async def test_a_handshake_that_fails_leaves_the_users_other_connections_counted(
    lobby, alice, bob, monkeypatch
):
    token = await token_for(alice)
    async with connected("lobby", token=token):
        real_lookup = services.open_room

        def database_down(**kwargs):
            raise ConnectionError("database is down")

        monkeypatch.setattr(services, "open_room", database_down)
        failing = WebsocketCommunicator(
            application,
            ws_path("lobby"),
            headers=[(b"authorization", f"Token {token}".encode())],
        )
        with pytest.raises(ConnectionError):
            await failing.connect()
        monkeypatch.setattr(services, "open_room", real_lookup)

        async with connected(
            "lobby", token=await token_for(bob), skip_greeting=False
        ) as bob_ws:
            await bob_ws.receive_json_from()  # welcome
            presence = await bob_ws.receive_json_from()
            assert presence["users"] == ["alice", "bob"]
        assert dict(get_presence().users[RoomRef(lobby.pk, "lobby")]) == {"alice": 1}


@pytest.mark.parametrize(
    "raised",
    [
        OSError("client disconnected"),  # uvicorn's ClientDisconnected
        Disconnected("Attempt to send on a closed protocol"),  # Daphne's
    ],
    ids=["uvicorn", "daphne"],
)
async def test_a_delivery_to_a_client_that_has_gone_is_not_an_error(
    lobby, alice, caplog, raised
):
    """A send that races the client's disconnect raises in the server
    (uvicorn: ClientDisconnected; Daphne: autobahn's Disconnected). It is
    no error: the room goes on and nothing is logged as one."""
    async with (
        connected("lobby") as gone,
        connected("lobby", token=await token_for(alice)) as sender,
    ):
        listeners = get_hub().members[services.room_group(lobby.pk)]
        gone_consumer = next(c for c in listeners if c.username is None)

        async def client_left(message):
            raise raised

        gone_consumer.base_send = client_left
        await send_json(
            sender, {"type": "send", "body": "still here", "client_id": "c1"}
        )
        for _ in range(2):  # the ack and the message, in either order
            frame = await sender.receive_json_from()
            assert frame["type"] in {"ack", "message"}
        await send_json(sender, {"type": "send", "body": "and here", "client_id": "c2"})
        for _ in range(2):
            assert (await sender.receive_json_from())["type"] in {"ack", "message"}
        del gone
    assert not [r for r in caplog.records if r.levelname in {"ERROR", "CRITICAL"}]
