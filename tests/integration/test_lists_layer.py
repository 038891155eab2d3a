"""The Channels tutorial's layer (channels_redis' RedisChannelLayer) is a
tested choice: ``SWITCHBOARD_CHANNEL_LAYER=lists``.

Two instances on that layer, with a Redis of the module's own: messages
cross instances both ways, a removal on one instance cuts the member off on
the other, and after Redis restarts (forgetting every group, which the list
layer keeps in Redis) connections still get what was sent, because the hub
re-joins its groups and catches them up. The other modules run the default
pub/sub layer.
"""

from __future__ import annotations

import asyncio

import pytest

from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room
from harness.redis_server import RedisServer
from harness.ws import Clients, handshake_status, wait_for_readyz
from tests.integration.common import unique_slug

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(
    module_launcher: Launcher, deployment: Deployment, own_redis: RedisServer
) -> tuple[AppProcess, AppProcess]:
    env = {"REDIS_URL": own_redis.url, "SWITCHBOARD_CHANNEL_LAYER": "lists"}
    a, b = module_launcher.launch("a", "b", env=env)
    deployment.fetch_tokens(a, b)
    return a, b


async def test_the_list_layer_is_the_one_in_use(
    pair: tuple[AppProcess, AppProcess],
    own_redis: RedisServer,
    deployment: Deployment,
    clients: Clients,
) -> None:
    """Not the pub/sub layer by mistake: the list layer keeps each group as
    a sorted set in Redis (``<prefix>:group:<name>``)."""
    a, _ = pair
    tokens, names = deployment.tokens, deployment.usernames
    slug = unique_slug("lists-groups")
    create_room(a, tokens[names[0]], slug)
    await clients.open(a, slug, name="anonymous@A")
    keys = [key.decode() for key in own_redis.client().scan_iter("*:group:*")]
    assert keys, "no group kept in Redis: not the list layer"


async def test_messages_cross_instances_both_ways_once_in_order(
    pair: tuple[AppProcess, AppProcess], deployment: Deployment, clients: Clients
) -> None:
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    slug = unique_slug("lists-fanout")
    create_room(a, tokens[names[0]], slug)
    on_a = await clients.open(a, slug, token=tokens[names[1]], name="user@A")
    on_b = await clients.open(b, slug, token=tokens[names[2]], name="user@B")
    first = await on_a.send_message("from A")
    status, posted = await ahttp_json(
        b,
        "POST",
        f"/api/rooms/{slug}/messages/",
        token=tokens[names[2]],
        body={"body": "from B over HTTP"},
    )
    assert status == 201, posted
    for client in (on_a, on_b):
        await client.wait_for_seqs({first, posted["seq"]})
        assert [m["body"] for m in client.messages] == ["from A", "from B over HTTP"]


async def test_a_member_removed_on_a_is_cut_off_on_b(
    pair: tuple[AppProcess, AppProcess], deployment: Deployment, clients: Clients
) -> None:
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    owner, member = names[3], names[4]
    slug = unique_slug("lists-private")
    create_room(a, tokens[owner], slug, private=True)
    status, _ = await ahttp_json(
        a,
        "POST",
        f"/api/rooms/{slug}/members/",
        token=tokens[owner],
        body={"username": member},
    )
    assert status == 201
    member_on_b = await clients.open(b, slug, token=tokens[member], name="member@B")
    status, _ = await ahttp_json(
        a, "DELETE", f"/api/rooms/{slug}/members/{member}/", token=tokens[owner]
    )
    assert status == 204
    assert await member_on_b.wait_closed(timeout=5) == 4403
    assert await handshake_status(b, slug, tokens[member]) == 403


async def test_after_redis_restarts_connections_get_what_was_sent(
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
    own_redis: RedisServer,
) -> None:
    """The restarted Redis has forgotten the groups: without the hub's
    re-join a message published afterwards would reach nobody live."""
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    slug = unique_slug("lists-restart")
    create_room(a, tokens[names[5]], slug)
    reader_a = await clients.open(a, slug, name="anonymous@A")
    sender_b = await clients.open(b, slug, token=tokens[names[5]], name="sender@B")
    before = await sender_b.send_message("before the restart")
    await reader_a.wait_for_seqs({before})

    await asyncio.to_thread(own_redis.stop)
    await asyncio.to_thread(own_redis.start)
    for app in pair:
        await wait_for_readyz(app, 200)
    status, posted = await ahttp_json(
        b,
        "POST",
        f"/api/rooms/{slug}/messages/",
        token=tokens[names[5]],
        body={"body": "after the restart"},
    )
    assert status == 201, posted
    if reader_a.closed:  # allowed: a client resumes after any close
        reader_a = await clients.open(
            a, slug, after=reader_a.contiguous_seq(), name="anonymous@A-again"
        )
    await reader_a.wait_for_seqs(range(1, posted["seq"] + 1), timeout=10)
    assert [m["body"] for m in reader_a.messages][-1] == "after the restart"
