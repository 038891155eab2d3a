"""Lost access stays lost across instances, even when the revocation itself
is lost: a member removed while Redis is unreachable never receives what is
posted after the removal, live, by catch-up or by replay, and a blip of the
instances' subscriptions, too short for any probe to notice, still has them
read access again. And the limits on open connections hold across instances.

The periodic re-check is an hour here, so nothing below leans on it.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room
from harness.redis_server import RedisServer
from harness.ws import Clients, WsClient, handshake_status, wait_for_readyz
from tests.integration.common import unique_slug

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(
    module_launcher: Launcher, deployment: Deployment, own_redis: RedisServer
) -> tuple[AppProcess, AppProcess]:
    a, b = module_launcher.launch(
        "a",
        "b",
        env={
            "REDIS_URL": own_redis.url,
            "SWITCHBOARD_CONNECTIONS_PER_USER": "3",
            "SWITCHBOARD_ACCESS_RECHECK_SECONDS": "3600",
        },
    )
    deployment.fetch_tokens(a, b)
    return a, b


@pytest.fixture(autouse=True)
async def redis_up(own_redis: RedisServer, pair: tuple[AppProcess, AppProcess]) -> None:
    if not own_redis.running:
        await asyncio.to_thread(own_redis.start)
    for app in pair:
        await wait_for_readyz(app, 200)


async def private_room_of_three(
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
    prefix: str,
) -> tuple[str, WsClient, list[WsClient], WsClient]:
    """A private room: its owner on A, a member on both instances (to be
    removed), another member on B (staying). Returns the slug and sockets."""
    a, b = pair
    tokens = deployment.tokens
    owner, member, other = deployment.usernames[:3]
    slug = unique_slug(prefix)
    create_room(a, tokens[owner], slug, private=True)
    for username in (member, other):
        status, _ = await ahttp_json(
            a, "POST", f"/api/rooms/{slug}/members/",
            token=tokens[owner], body={"username": username},
        )  # fmt: skip
        assert status == 201
    owner_ws = await clients.open(a, slug, token=tokens[owner], name="owner@A")
    removed = [
        await clients.open(app, slug, token=tokens[member], name=f"member@{app.name}")
        for app in pair
    ]
    staying = await clients.open(b, slug, token=tokens[other], name="other@B")
    return slug, owner_ws, removed, staying


async def test_a_member_removed_while_redis_is_down_gets_nothing_after(
    own_redis: RedisServer,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
) -> None:
    b = pair[1]
    tokens = deployment.tokens
    owner, member = deployment.usernames[:2]
    slug, owner_ws, removed, staying = await private_room_of_three(
        pair, deployment, clients, "revoked-offline"
    )
    before = await owner_ws.send_message("before the removal")
    for client in [*removed, staying]:
        await client.wait_for_seqs([before])

    await asyncio.to_thread(own_redis.stop)
    # The removal commits; its revocation event cannot be published.
    status, _ = await ahttp_json(
        b, "DELETE", f"/api/rooms/{slug}/members/{member}/", token=tokens[owner]
    )
    assert status == 204
    secret = await owner_ws.send_message("after the removal, during the outage")
    await asyncio.to_thread(own_redis.start)
    # Posted as soon as Redis is back, before the instances may have noticed
    # that it was gone: the removed member must not get it either.
    later = await owner_ws.send_message("after the removal, Redis back")

    # Each instance hears its subscription reconnect, reads access again
    # before it sends anything more, and closes the removed member's socket.
    for client in removed:
        assert await client.wait_closed(timeout=15) == 4403
    # The member who stayed gets both, by catch-up or live.
    await staying.wait_for_seqs([secret, later], timeout=15)
    for client in removed:
        assert secret not in client.seqs(), client
        assert later not in client.seqs(), client
    # And resuming is refused on both instances: nothing by replay either.
    for app in pair:
        assert await handshake_status(app, slug, token=tokens[member]) == 403


async def test_a_blip_of_the_subscriptions_alone_has_access_read_again(
    own_redis: RedisServer,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
) -> None:
    """Redis drops the instances' pub/sub connections and they subscribe again
    at once: whatever was published in between, a revocation among it, is
    gone, and no probe need fail. The reconnect alone must tell."""
    slug, owner_ws, removed, staying = await private_room_of_three(
        pair, deployment, clients, "blip"
    )
    member = deployment.usernames[1]
    # The membership goes without any event, as if its revocation had been
    # published into the blip below.
    with psycopg.connect(deployment.env["DATABASE_URL"], autocommit=True) as db:
        deleted = db.execute(
            "DELETE FROM core_membership WHERE room_id ="
            " (SELECT id FROM core_room WHERE slug = %s) AND user_id ="
            " (SELECT id FROM auth_user WHERE username = %s)",
            (slug, member),
        ).rowcount
    assert deleted == 1

    killed = own_redis.client().client_kill_filter(_type="pubsub")
    assert killed >= len(pair)
    for client in removed:
        assert await client.wait_closed(timeout=10) == 4403
    # Those who kept their access stay connected and are served live.
    after = await owner_ws.send_message("after the blip")
    await staying.wait_for_seqs([after], timeout=10)
    for client in removed:
        assert after not in client.seqs(), client


async def test_the_connection_limit_per_user_spans_instances(
    pair: tuple[AppProcess, AppProcess], deployment: Deployment, clients: Clients
) -> None:
    a, b = pair
    token = deployment.tokens[deployment.usernames[4]]
    slug = unique_slug("limit")
    create_room(a, token, slug)
    opened = [
        await clients.open(app, slug, token=token, name=f"tab{n}@{app.name}")
        for n, app in enumerate([a, b, a])
    ]
    refused = await clients.open_refused(b, slug, token=token)
    assert refused["code"] == "too_many_connections"
    assert refused["close_code"] == 4429
    # The hint reaches the client through a real Daphne, in the close reason.
    assert refused["close_reason"] == f"retry_after_ms={refused['retry_after_ms']}"
    await opened[0].close()
    # The slot is free on every instance once the connection has gone.
    await clients.open(b, slug, token=token, name="tab3@b")
