"""The fault suite: real processes fail mid-traffic, and nothing acknowledged
is lost or stays invisible.

Each test breaks one thing (an instance, Redis, PostgreSQL, a client's
patience) while clients send, and checks what a user would: every ack's
message reaches every open client on the instances still serving, clients
recover by themselves, and /readyz tells the truth. Each prints its figures
(``pytest -s``); docs/reliability.md records them.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.conftest import (
    Clients,
    Deployment,
    Launcher,
    create_room,
    report,
    unique_slug,
)
from tests.support.faults import DIE_BEFORE_PUBLISH
from tests.support.services import AppProcess, async_wait_until

pytestmark = pytest.mark.integration

DELIVERY_BOUND_SECONDS = 5.0


@pytest.fixture(scope="module")
def serving(module_launcher: Launcher, deployment: Deployment) -> AppProcess:
    """An instance that lives through every test of the module."""
    (app,) = module_launcher.launch("serving")
    deployment.fetch_tokens(app)
    return app


async def test_a_message_whose_publisher_died_reaches_quiet_clients_in_time(
    launcher: Launcher, serving: AppProcess, deployment: Deployment, clients: Clients
) -> None:
    """The sender's instance dies after the commit and before the publish.
    Nothing is sent after it, yet clients on the other instance get the
    message within the delivery bound; the sender's retry finds it stored.
    """
    (dying,) = launcher.launch_each(
        {"dying": {}}, application="tests.support.faults:die_before_publish"
    )
    tokens, names = deployment.tokens, deployment.usernames
    slug = unique_slug("lost-publish")
    create_room(serving, tokens[names[0]], slug)
    watchers = [
        await clients.open(serving, slug, name="anonymous@serving"),
        await clients.open(serving, slug, token=tokens[names[1]], name="user@serving"),
    ]
    sender = await clients.open(dying, slug, token=tokens[names[2]], name="sender")

    client_id = await sender.post(f"{DIE_BEFORE_PUBLISH}: committed, then silence")
    await sender.wait_closed(timeout=10)
    died_at = time.monotonic()
    await async_wait_until(
        lambda: not dying.running, timeout=10, message="the instance to exit"
    )

    await asyncio.gather(
        *(w.wait_for_seqs({1}, timeout=DELIVERY_BOUND_SECONDS + 2) for w in watchers)
    )
    seen_after = time.monotonic() - died_at
    for watcher in watchers:
        assert [m["client_id"] for m in watcher.messages] == [client_id]

    # The sender resends after reconnecting: the repeat is the original.
    again = await clients.open(serving, slug, token=tokens[names[2]], name="again")
    await again.send({"type": "send", "body": sender.sent[client_id],
                      "client_id": client_id})  # fmt: skip
    await again.wait_for(lambda: client_id in again.acks, 10, "the repeat's ack")
    assert again.acks[client_id] == 1
    report(
        "publisher killed between commit and publish",
        {
            "seen_by_quiet_clients_after_s": f"{seen_after:.2f}",
            "bound_s": DELIVERY_BOUND_SECONDS,
        },
    )
    assert seen_after < DELIVERY_BOUND_SECONDS + 1
