"""Aggregate limits and fail-closed access, through the real ASGI app.

Connection counts per user, per anonymous address and per process; the
handshake rate per address; one send, history and typing budget per user
across sockets; access re-read when a revocation may have been missed.
"""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from backend.asgi import application
from core import consumers, services
from core.fanout import get_hub
from core.models import Membership, Room
from harness.waiting import async_wait_until
from tests.factories import RoomFactory, UserFactory, private_room
from tests.unit.conftest import connected, receive_until, send_json, token_for, ws_path

pytestmark = pytest.mark.django_db(transaction=True)


async def refused_by_limit(slug, token=None, client=("203.0.113.7", 5000)):
    """Connect; expect the limit refusal and return its error frame."""
    headers = [(b"authorization", f"Token {token}".encode())] if token else []
    communicator = WebsocketCommunicator(application, ws_path(slug), headers)
    communicator.scope["client"] = client
    try:
        accepted, _ = await communicator.connect(timeout=5)
        assert accepted, "a limit refusal is accepted first, to say why"
        error = await communicator.receive_json_from(timeout=5)
        close = await communicator.receive_output(timeout=5)
        assert close["type"] == "websocket.close"
        assert close["code"] == consumers.CLOSE_TOO_MANY
        assert close["reason"] == f"retry_after_ms={error['retry_after_ms']}"
        assert error["type"] == "error"
        assert error["retry_after_ms"] > 0
        return error
    finally:
        await communicator.disconnect()


def from_address(address):
    communicator = WebsocketCommunicator(application, ws_path("lobby"))
    communicator.scope["client"] = (address, 5000)
    return communicator


async def greeted(communicator):
    accepted, code = await communicator.connect(timeout=5)
    assert accepted, code
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    assert (await communicator.receive_json_from(timeout=5))["type"] == "presence"
    return communicator


# --- connection counts --------------------------------------------------------


async def test_a_user_holds_at_most_the_connection_limit(lobby, alice, bob, settings):
    settings.CONNECTIONS_PER_USER = 2
    token = await token_for(alice)
    async with connected("lobby", token=token), connected("lobby", token=token):
        error = await refused_by_limit("lobby", token=token)
        assert error["code"] == "too_many_connections"
        # Another user is not affected.
        async with connected("lobby", token=await token_for(bob)):
            pass
    # Closing frees the slots.
    async with connected("lobby", token=token), connected("lobby", token=token):
        pass


async def test_the_user_limit_counts_every_room(lobby, alice, settings):
    settings.CONNECTIONS_PER_USER = 1
    await database_sync_to_async(RoomFactory)(slug="other")
    token = await token_for(alice)
    async with connected("lobby", token=token):
        await refused_by_limit("other", token=token)


async def test_anonymous_connections_are_limited_per_address(lobby, settings):
    settings.ANONYMOUS_CONNECTIONS_PER_ADDRESS = 2
    opened = [await greeted(from_address("198.51.100.1")) for _ in range(2)]
    try:
        error = await refused_by_limit("lobby", client=("198.51.100.1", 9))
        assert error["code"] == "too_many_connections"
        other = await greeted(from_address("198.51.100.2"))
        await other.disconnect()
    finally:
        for communicator in opened:
            await communicator.disconnect()
    again = await greeted(from_address("198.51.100.1"))
    await again.disconnect()


async def test_a_process_holds_at_most_its_connection_limit(lobby, alice, settings):
    settings.CONNECTIONS_PER_PROCESS = 2
    async with connected("lobby"), connected("lobby", token=await token_for(alice)):
        assert consumers.open_connections() == 2
        error = await refused_by_limit("lobby")
        assert error["code"] == "too_many_connections"
    assert consumers.open_connections() == 0


async def test_a_refused_handshake_does_not_count(lobby, alice, settings):
    """Refusals for no access or a limit leave no count behind."""
    settings.CONNECTIONS_PER_USER = 1
    token = await token_for(alice)
    await database_sync_to_async(private_room)(
        await database_sync_to_async(UserFactory)(), slug="secret"
    )
    communicator = WebsocketCommunicator(
        application, ws_path("secret"), [(b"authorization", f"Token {token}".encode())]
    )
    accepted, _ = await communicator.connect(timeout=5)
    assert not accepted
    assert consumers.open_connections() == 0
    async with connected("lobby", token=token):
        await refused_by_limit("lobby", token=token)
        assert consumers.open_connections() == 1


async def test_handshakes_are_rate_limited_per_address(lobby, settings):
    settings.HANDSHAKE_BURST_PER_ADDRESS = 3
    settings.HANDSHAKE_RATE_PER_ADDRESS = 0.1
    for _ in range(3):
        communicator = await greeted(from_address("192.0.2.1"))
        await communicator.disconnect()
    error = await refused_by_limit("lobby", client=("192.0.2.1", 1))
    assert error["code"] == "too_many_connections"
    assert 9000 < error["retry_after_ms"] <= 10000
    other = await greeted(from_address("192.0.2.2"))
    await other.disconnect()


# --- budgets per user -----------------------------------------------------------


async def test_one_send_budget_is_shared_by_a_users_sockets(lobby, alice, settings):
    settings.SEND_BURST = 3
    settings.SEND_RATE_PER_SECOND = 0.1
    token = await token_for(alice)
    async with (
        connected("lobby", token=token) as one,
        connected("lobby", token=token) as two,
    ):
        for n, ws in enumerate([one, two, one]):
            await send_json(ws, {"type": "send", "body": f"m{n}", "client_id": f"c{n}"})
            await receive_until(ws, lambda f, n=n: f.get("client_id") == f"c{n}")
        await send_json(two, {"type": "send", "body": "over", "client_id": "c3"})
        error, _ = await receive_until(two, lambda f: f["type"] == "error")
        assert (error["code"], error["client_id"]) == ("rate_limited", "c3")
    stored = await database_sync_to_async(
        lambda: list(Room.objects.get(slug="lobby").messages.values_list("body"))
    )()
    assert stored == [("m0",), ("m1",), ("m2",)]


async def test_history_budget_outlives_a_reconnect(lobby, settings):
    settings.HISTORY_BURST = 2
    settings.HISTORY_RATE_PER_SECOND = 0.1
    async with connected("lobby") as ws:
        for _ in range(2):
            await send_json(ws, {"type": "history"})
            assert (await ws.receive_json_from())["type"] == "history"
    async with connected("lobby") as ws:
        await send_json(ws, {"type": "history"})
        assert (await ws.receive_json_from())["code"] == "rate_limited"


async def test_typing_is_relayed_once_per_interval_per_user(lobby, alice, bob):
    token = await token_for(alice)
    async with (
        connected("lobby", token=await token_for(bob)) as watcher,
        connected("lobby", token=token) as first,
        connected("lobby", token=token) as second,
    ):
        await send_json(first, {"type": "typing"})
        typing, _ = await receive_until(watcher, lambda f: f["type"] == "typing")
        assert typing["user"] == "alice"
        # The other tab of the same user, within the interval: dropped. The
        # message after it is published after it, so it would come first.
        await send_json(second, {"type": "typing"})
        await send_json(second, {"type": "send", "body": "after", "client_id": "a"})
        _, before = await receive_until(watcher, lambda f: f["type"] == "message")
        assert [f for f in before if f["type"] == "typing"] == []


# --- access re-read -------------------------------------------------------------


async def closed_with(ws, code):
    """The frames ``ws`` is sent until it is closed, with ``code``."""
    frames = []
    while True:
        output = await ws.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            assert output.get("code") == code, output
            return frames
        frames.append(json.loads(output["text"]))


async def test_a_membership_deleted_without_word_is_found_by_the_recheck(
    alice, bob, settings
):
    settings.ACCESS_RECHECK_SECONDS = 0.5
    room = await database_sync_to_async(private_room)(alice, bob)
    async with (
        connected("secret", token=await token_for(bob)) as bob_ws,
        connected("secret", token=await token_for(alice)) as alice_ws,
    ):
        # A bulk update publishes nothing: only the periodic re-read sees it.
        await database_sync_to_async(
            lambda: Membership.objects.filter(room=room, user=bob).update(
                room=RoomFactory(slug="elsewhere")
            )
        )()
        await closed_with(bob_ws, 4403)
        await send_json(alice_ws, {"type": "ping"})
        assert (await receive_until(alice_ws, lambda f: f["type"] == "pong"))[0]


async def test_a_deleted_token_is_found_by_the_recheck(lobby, alice, settings):
    settings.ACCESS_RECHECK_SECONDS = 0.5
    token = await token_for(alice)
    async with connected("lobby", token=token) as ws:
        await database_sync_to_async(
            lambda: Token.objects.filter(key=token).update(key="0" * 40)
        )()
        await closed_with(ws, 4403)


async def test_an_expired_session_is_found_by_the_recheck(lobby, alice, settings):
    settings.ACCESS_RECHECK_SECONDS = 0.5
    from django.test import Client

    client = Client()
    await database_sync_to_async(client.force_login)(alice)
    cookie = client.cookies["sessionid"].value
    headers = [(b"cookie", f"sessionid={cookie}".encode())]
    communicator = WebsocketCommunicator(application, ws_path("lobby"), headers)
    try:
        assert (await communicator.connect(timeout=5))[0]
        welcome = await communicator.receive_json_from()
        assert welcome["user"] == "alice"
        from django.utils import timezone

        await database_sync_to_async(
            lambda: Session.objects.filter(session_key=cookie).update(
                expire_date=timezone.now()
            )
        )()
        await closed_with(communicator, 4403)
    finally:
        await communicator.disconnect()


async def test_a_recheck_event_closes_the_connections_that_lost_access(
    lobby, alice, bob
):
    async with (
        connected("lobby", token=await token_for(alice)) as member_ws,
        connected("lobby") as anonymous_ws,
        connected("lobby", token=await token_for(bob)) as outsider_ws,
    ):
        await database_sync_to_async(
            lambda: Membership.objects.create(room=lobby, user=alice)
        )()
        await database_sync_to_async(
            lambda: Room.objects.filter(pk=lobby.pk).update(is_private=True)
        )()
        await database_sync_to_async(services.recheck_access)(room_id=lobby.pk)
        await closed_with(anonymous_ws, 4403)
        await closed_with(outsider_ws, 4403)
        await send_json(member_ws, {"type": "ping"})
        assert (await receive_until(member_ws, lambda f: f["type"] == "pong"))[0]


def delete_by_sql(room_id):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM core_room WHERE id = %s", [room_id])


async def test_a_reused_slug_never_reaches_the_old_rooms_sockets(lobby, alice):
    async with connected("lobby") as old_ws:
        # Deleted by raw SQL (no signal, no event) and made again.
        await database_sync_to_async(delete_by_sql)(lobby.pk)
        new_room = await database_sync_to_async(RoomFactory)(slug="lobby")
        async with connected("lobby", token=await token_for(alice)) as new_ws:
            await send_json(new_ws, {"type": "send", "body": "new", "client_id": "n"})
            await receive_until(new_ws, lambda f: f["type"] == "ack")
            await send_json(old_ws, {"type": "ping"})
            frames = []
            while True:
                output = await old_ws.receive_output(timeout=5)
                if output["type"] == "websocket.close":
                    break
                frames.append(json.loads(output["text"]))
                if frames[-1]["type"] == "pong":
                    break
            assert [f for f in frames if f["type"] == "message"] == []
        assert new_room.pk != lobby.pk


async def test_a_revocation_during_the_connect_replay_acts_at_once(
    alice, bob, monkeypatch
):
    room = await database_sync_to_async(private_room)(alice, bob)
    await database_sync_to_async(
        lambda: [
            services.store_message(
                room=room, author=alice, body=f"m{n}", client_id=None
            )
            for n in range(3)
        ]
    )()
    replaying = asyncio.Event()
    resume = asyncio.Event()
    real_send_stored = consumers.RoomConsumer._send_stored

    async def slow_send_stored(self, *args, **kwargs):
        replaying.set()
        await resume.wait()
        return await real_send_stored(self, *args, **kwargs)

    monkeypatch.setattr(consumers.RoomConsumer, "_send_stored", slow_send_stored)
    token = await token_for(bob)
    communicator = WebsocketCommunicator(
        application,
        ws_path("secret", "after=0"),
        [(b"authorization", f"Token {token}".encode())],
    )
    try:
        assert (await communicator.connect(timeout=5))[0]
        await asyncio.wait_for(replaying.wait(), 5)
        await database_sync_to_async(services.remove_member)(
            room=room, actor=alice, username="bob"
        )
        # The revocation that arrives mid-replay is not held behind it.
        await database_sync_to_async(services.revoke_access)(
            user_id=bob.pk, room="secret"
        )
        (connecting,) = get_hub().members[services.user_group(bob.pk)]
        await async_wait_until(lambda: connecting.closing, timeout=5)
        resume.set()
        frames = await closed_with(communicator, 4403)
        assert [f["type"] for f in frames] == ["welcome"]
    finally:
        await communicator.disconnect()


async def test_after_a_gap_no_live_message_reaches_a_connection_unchecked(alice, bob):
    """A gap in live events may have swallowed a revocation: until a
    connection's access is read again, it gets no live messages; after the
    check, the ones it may keep arrive from the database."""
    room = await database_sync_to_async(private_room)(alice, bob)
    async with (
        connected("secret", token=await token_for(bob)) as bob_ws,
        connected("secret", token=await token_for(alice)) as alice_ws,
    ):
        # Removed while the revocation is lost: no event at all.
        await database_sync_to_async(
            lambda: Membership.objects.filter(room=room, user=bob).update(
                room=RoomFactory(slug="elsewhere")
            )
        )()
        hub = get_hub()
        hub._events_may_be_lost("simulated outage")
        await send_json(alice_ws, {"type": "send", "body": "secret", "client_id": "s"})
        ack, _ = await receive_until(alice_ws, lambda f: f["type"] == "ack")
        await hub._recover()
        message, _ = await receive_until(alice_ws, lambda f: f["type"] == "message")
        assert message["seq"] == ack["seq"]
        frames = await closed_with(bob_ws, 4403)
        assert [f for f in frames if f["type"] == "message"] == []


async def test_a_loss_within_a_gap_voids_the_checks_made_during_it(alice, bob):
    """Access read during a gap (a catch-up that ran before the layer was
    back) says nothing about a revocation lost after it: a second sign of
    loss, such as the subscription reconnecting, holds live messages back
    again until access is read once more."""
    room = await database_sync_to_async(private_room)(alice, bob)
    async with (
        connected("secret", token=await token_for(bob)) as bob_ws,
        connected("secret", token=await token_for(alice)) as alice_ws,
    ):
        hub = get_hub()
        hub._events_may_be_lost("the layer went away")
        hub._catch_up_everyone()  # bob still a member: his check passes
        await send_json(alice_ws, {"type": "send", "body": "kept", "client_id": "k"})
        kept, _ = await receive_until(alice_ws, lambda f: f["type"] == "ack")
        message, _ = await receive_until(bob_ws, lambda f: f["type"] == "message")
        assert message["seq"] == kept["seq"]

        await database_sync_to_async(
            lambda: Membership.objects.filter(room=room, user=bob).update(
                room=RoomFactory(slug="elsewhere")
            )
        )()
        hub._events_may_be_lost("the subscription reconnected")
        await send_json(alice_ws, {"type": "send", "body": "secret", "client_id": "s"})
        await receive_until(alice_ws, lambda f: f["type"] == "ack")
        await hub._recover()
        frames = await closed_with(bob_ws, 4403)
        assert [f for f in frames if f["type"] == "message"] == []


async def test_the_http_api_spends_the_same_send_budget(lobby, alice, settings):
    settings.SEND_BURST = 2
    settings.SEND_RATE_PER_SECOND = 0.1
    token = await token_for(alice)

    def post_over_http(body):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        return client.post(
            "/api/rooms/lobby/messages/", {"body": body}, format="json"
        ).status_code

    assert await database_sync_to_async(post_over_http)("one") == 201
    async with connected("lobby", token=token) as ws:
        await send_json(ws, {"type": "send", "body": "two", "client_id": "t"})
        await receive_until(ws, lambda f: f["type"] == "ack")
        assert await database_sync_to_async(post_over_http)("three") == 429
        await send_json(ws, {"type": "send", "body": "four", "client_id": "f"})
        error, _ = await receive_until(ws, lambda f: f["type"] == "error")
        assert error["code"] == "rate_limited"
