"""Watching rooms across instances (docs/protocol.md, section 18): two
Daphne instances over Redis and PostgreSQL.

alice watches on A while bob posts in another room through B: the activity
reaches her; she marks it read through B: her watching socket on A hears.
The counts come from PostgreSQL here (SQLite in the unit tier), mentions
narrowed by the database and decided by the one rule: a C-locale cluster's
regular expressions would have counted "é@name".
"""

from __future__ import annotations

import pytest

from core import mentions
from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room
from harness.ws import Clients, WsClient, is_type
from tests.integration.common import unique_slug
from tests.unit.test_mentions import CASES

pytestmark = pytest.mark.integration

USERS = 2


@pytest.fixture(scope="module")
def pair(
    module_launcher: Launcher, deployment: Deployment
) -> tuple[AppProcess, AppProcess]:
    a, b = module_launcher.launch("a", "b", env={"SWITCHBOARD_SEND_BURST": "200"})
    deployment.fetch_tokens(a, b)
    return a, b


async def watch(clients: Clients, app: AppProcess, slug: str, token: str) -> WsClient:
    client = WsClient(app, slug, token=token, name=f"watcher@{app.name}")
    client.url = app.ws_url(f"/ws/rooms/{slug}/?watch=1")
    clients.all.append(client)
    await client.connect()
    await client.wait_for_frame(is_type("rooms"), what="the rooms frame")
    return client


async def test_activity_and_read_positions_cross_instances(
    pair: tuple[AppProcess, AppProcess], deployment: Deployment, clients: Clients
) -> None:
    a, b = pair
    alice, bob = deployment.usernames
    alice_token, bob_token = deployment.tokens[alice], deployment.tokens[bob]
    home, ops = unique_slug("home"), unique_slug("ops")
    create_room(a, alice_token, home)
    create_room(b, bob_token, ops)
    watcher = await watch(clients, a, home, alice_token)
    rooms = watcher.frames[-1]["rooms"]
    assert {home, ops} <= {room["slug"] for room in rooms}

    status, posted = await ahttp_json(
        b,
        "POST",
        f"/api/rooms/{ops}/messages/",
        token=bob_token,
        body={"body": f"hi @{alice.upper()}."},
    )
    assert status == 201, posted
    activity = await watcher.wait_for_frame(
        lambda f: f.get("type") == "activity" and f["room"] == ops,
        what="activity from B",
    )
    assert activity == {
        "type": "activity",
        "room": ops,
        "seq": posted["seq"],
        "kind": "message",
        "author": bob,
        "mentions": [alice.lower()],
        "target": None,
    }
    status, state = await ahttp_json(
        b, "GET", f"/api/rooms/{ops}/read/", token=alice_token
    )
    assert (status, state) == (
        200,
        {"room": ops, "read_seq": 0, "unread": 1, "mentions": 1},
    )

    seen = len(watcher.frames)
    status, state = await ahttp_json(
        b, "PUT", f"/api/rooms/{ops}/read/", token=alice_token, body={"seq": 1}
    )
    assert (status, state) == (
        200,
        {"room": ops, "read_seq": 1, "unread": 0, "mentions": 0},
    )
    moved = await watcher.wait_for_frame(
        is_type("read"), since=seen, what="the read frame from B"
    )
    assert moved == {"type": "read", **state}


async def test_mentions_are_counted_by_the_one_rule_on_postgresql(
    pair: tuple[AppProcess, AppProcess], deployment: Deployment
) -> None:
    a, _ = pair
    alice, bob = deployment.usernames
    slug = unique_slug("mentions")
    create_room(a, deployment.tokens[bob], slug)
    # The unit tier's table, with "bob" standing for alice's name.
    name = alice
    expected = 0
    for body in CASES:
        text = body.replace("bob", name).replace("Bob", name.title())
        if not text.strip():
            continue
        status, _ = await ahttp_json(
            a, "POST", f"/api/rooms/{slug}/messages/",
            token=deployment.tokens[bob], body={"body": text},
        )  # fmt: skip
        assert status == 201
        expected += mentions.mentions(text, name)
    status, state = await ahttp_json(
        a, "GET", f"/api/rooms/{slug}/read/", token=deployment.tokens[alice]
    )
    assert status == 200
    assert state["mentions"] == expected > 0


async def test_room_changes_reach_members_and_watchers_on_the_other_instance(
    pair: tuple[AppProcess, AppProcess], deployment: Deployment, clients: Clients
) -> None:
    """bob adds alice to his private room on B: her watching socket on A
    gets a fresh rooms frame naming it; he renames it: her socket in the
    room and his watcher hear; he removes her: her room socket closes with
    4403 and her rooms frame drops the room."""
    a, b = pair
    alice, bob = deployment.usernames
    alice_token, bob_token = deployment.tokens[alice], deployment.tokens[bob]
    home, secret = unique_slug("home"), unique_slug("secret")
    create_room(a, alice_token, home)
    create_room(b, bob_token, secret, private=True)
    alice_watching = await watch(clients, a, home, alice_token)
    assert secret not in {r["slug"] for r in alice_watching.frames[-1]["rooms"]}
    bob_watching = await watch(clients, b, home, bob_token)

    seen = len(alice_watching.frames)
    status, _ = await ahttp_json(
        b, "POST", f"/api/rooms/{secret}/members/", token=bob_token,
        body={"username": alice},
    )  # fmt: skip
    assert status == 201
    rooms = await alice_watching.wait_for_frame(
        lambda f: f["type"] == "rooms" and secret in {r["slug"] for r in f["rooms"]},
        since=seen,
        what="a rooms frame with the room she was added to",
    )
    assert [r["is_private"] for r in rooms["rooms"] if r["slug"] == secret] == [True]

    alice_inside = await clients.open(a, secret, token=alice_token, name="alice@A")
    status, renamed = await ahttp_json(
        b, "PATCH", f"/api/rooms/{secret}/", token=bob_token,
        body={"name": "Launch plans"},
    )  # fmt: skip
    assert status == 200, renamed
    expected = {
        "type": "room",
        "slug": secret,
        "name": "Launch plans",
        "members": sorted([alice, bob]),
    }
    for client in (alice_inside, bob_watching):
        changed = await client.wait_for_frame(
            lambda f: f["type"] == "room" and f["name"] == "Launch plans",
            what="the room frame from B",
        )
        assert changed == expected

    seen = len(alice_watching.frames)
    status, _ = await ahttp_json(
        b, "DELETE", f"/api/rooms/{secret}/members/{alice}/", token=bob_token
    )
    assert status == 204
    assert await alice_inside.wait_closed(timeout=5) == 4403
    await alice_watching.wait_for_frame(
        lambda f: (
            f["type"] == "rooms" and secret not in {r["slug"] for r in f["rooms"]}
        ),
        since=seen,
        what="a rooms frame without the room she was removed from",
    )
    assert not alice_watching.closed
