"""Lost access stays lost across instances, even when the revocation itself
is lost: a member removed while Redis is unreachable never receives what is
posted after the removal, live, by catch-up or by replay. And the limits on
open connections hold across instances.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import (
    Clients,
    Deployment,
    Launcher,
    ahttp_json,
    create_room,
    handshake_status,
    unique_slug,
    wait_for_readyz,
)
from tests.support.services import AppProcess, RedisServer

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
            "SWITCHBOARD_ACCESS_RECHECK_SECONDS": "2",
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


async def test_a_member_removed_while_redis_is_down_gets_nothing_after(
    own_redis: RedisServer,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
) -> None:
    a, b = pair
    tokens = deployment.tokens
    owner, member, other = deployment.usernames[:3]
    slug = unique_slug("revoked-offline")
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

    # Closed by the catch-up's re-check if the instance noticed the outage,
    # else by the periodic re-check (2 s here). An outage shorter than the
    # hub's probe interval can go unnoticed; until the periodic re-check, a
    # message published then could still reach the removed member live
    # (docs/security.md), so "later" is posted once they are closed.
    for client in removed:
        assert await client.wait_closed(timeout=15) == 4403
    later = await owner_ws.send_message("after the removal, Redis back")
    # The member who stayed gets both; resuming covers an unnoticed outage.
    again = await clients.resume(b, staying)
    await again.wait_for_seqs([secret, later], earlier=(staying,), timeout=15)
    for client in removed:
        assert secret not in client.seqs(), client
        assert later not in client.seqs(), client
    # And resuming is refused on both instances: nothing by replay either.
    for app in pair:
        assert await handshake_status(app, slug, token=tokens[member]) == 403


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
    await opened[0].close()
    # The slot is free on every instance once the connection has gone.
    await clients.open(b, slug, token=token, name="tab3@b")
