"""Redis goes away and comes back on the same port; the instances carry on.

The module has a Redis of its own, stopped (SIGTERM: it closes every client
connection, as a failover does) and started again by the tests, with no
persistence: the restarted Redis has forgotten every group and presence
entry. Instances A and B are never restarted. Before each test Redis runs
and both instances are ready again.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from websockets.exceptions import InvalidStatus

from harness.app import AppProcess, manage
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room
from harness.redis_server import RedisServer
from harness.ws import Clients, WsClient, is_type, wait_for_readyz
from tests.integration.common import report, unique_slug

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(
    module_launcher: Launcher, deployment: Deployment, own_redis: RedisServer
) -> tuple[AppProcess, AppProcess]:
    a, b = module_launcher.launch("a", "b", env={"REDIS_URL": own_redis.url})
    deployment.fetch_tokens(a, b)
    return a, b


@pytest.fixture(autouse=True)
async def redis_up(own_redis: RedisServer, pair: tuple[AppProcess, AppProcess]) -> None:
    """Each test starts with Redis running and both instances ready."""
    if not own_redis.running:
        await asyncio.to_thread(own_redis.start)
    for app in pair:
        await wait_for_readyz(app, 200)


async def open_retrying(
    clients: Clients,
    app: AppProcess,
    slug: str,
    *,
    token: str | None,
    after: int,
    name: str,
) -> tuple[WsClient, int]:
    """Connect as the browser client does: a refused handshake (5xx) is
    retried with jittered exponential back-off. Returns the connected
    client, caught up, and the number of failed attempts.
    """
    deadline = time.monotonic() + 15
    failures = 0
    while True:
        try:
            client = await clients.open(app, slug, token=token, after=after, name=name)
        except InvalidStatus as exc:
            if exc.response.status_code < 500 or time.monotonic() > deadline:
                raise
            failures += 1
            # The documented client back-off, not a synchronisation wait.
            await asyncio.sleep(random.uniform(0.5, 1.0) * 0.2 * 2**failures)
            continue
        await client.catch_up()
        return client, failures


async def test_readyz_names_the_channel_layer_while_redis_is_down(
    own_redis: RedisServer, pair: tuple[AppProcess, AppProcess]
) -> None:
    """/readyz is for monitoring: 503 naming the failing part, 200 again
    once Redis answers, with no restart (same processes throughout).
    """
    pids = [app.pid for app in pair]
    await asyncio.to_thread(own_redis.stop)
    for app in pair:
        body = await wait_for_readyz(app, 503, timeout=10)
        assert body["failing"] == ["channel_layer"], body
        status, health = await ahttp_json(app, "GET", "/healthz")
        assert (status, health) == (200, {"status": "ok"})

    await asyncio.to_thread(own_redis.start)
    started = time.monotonic()
    for app in pair:
        assert await wait_for_readyz(app, 200, timeout=15) == {"status": "ok"}
    ready_after = time.monotonic() - started
    report("readyz after Redis returns", {"ready_after_s": f"{ready_after:.2f}"})
    assert [app.pid for app in pair] == pids
    for app in pair:
        app.check_alive()


async def test_messages_sent_during_an_outage_are_acked_stored_and_replayed(
    own_redis: RedisServer,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
) -> None:
    """Publishing fails while Redis is down; storing does not. Sends are
    acknowledged after the commit and ``announce`` posts. Once Redis is
    back, users who resume on either instance from before the outage get
    every message, gap-free (their handshakes are retried with back-off, as
    the browser client does).
    """
    a, b = pair
    tokens = deployment.tokens
    names = deployment.usernames
    slug = unique_slug("outage")
    create_room(a, tokens[names[0]], slug)
    sender_a = await clients.open(a, slug, token=tokens[names[1]], name="sender@A")
    sender_b = await clients.open(b, slug, token=tokens[names[2]], name="sender@B")
    first = await sender_a.send_message("before the outage")

    await asyncio.to_thread(own_redis.stop)
    acked_during = [
        await sender_a.send_message("during the outage, on A"),
        await sender_b.send_message("during the outage, on B"),
    ]
    announced = await asyncio.to_thread(
        manage, "announce", slug, "announced during the outage",
        env=deployment.instance_env({"REDIS_URL": own_redis.url}),
    )  # fmt: skip
    assert acked_during == [2, 3]
    assert "as seq 4." in announced.stdout

    # start() returns once Redis answers PING. /readyz is not waited for:
    # the clients retry their handshakes as browsers do, and that is tested.
    await asyncio.to_thread(own_redis.start)
    resumed = [
        await open_retrying(
            clients, app, slug, token=None, after=first, name=f"resumer@{app.name}"
        )
        for app in pair
    ]
    for resumer, _ in resumed:
        assert resumer.seqs() == [2, 3, 4]
        assert [m["author"] for m in resumer.messages] == [names[1], names[2], None]
    report(
        "Redis outage: resuming clients",
        {"failed_handshakes_before_success": [n for _, n in resumed]},
    )


async def test_connections_open_through_an_outage_get_what_they_missed(
    own_redis: RedisServer,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
) -> None:
    """A connection that stays open through the outage (or, if it was
    closed, its resumed successor) ends up with the messages stored while
    Redis was down, though nothing is sent after the outage to reveal the
    gap (core.fanout promises to catch its connections up).
    """
    a, b = pair
    tokens = deployment.tokens
    names = deployment.usernames
    slug = unique_slug("outage-quiet")
    create_room(a, tokens[names[0]], slug)
    sender_b = await clients.open(b, slug, token=tokens[names[2]], name="sender@B")
    through = [
        await clients.open(a, slug, token=tokens[names[1]], name="user@A"),
        await clients.open(a, slug, name="anonymous@A"),
        await clients.open(b, slug, name="anonymous@B"),
    ]
    await sender_b.send_message("before the outage")
    # Quiet means presence has settled too: everyone has seen the final
    # count, so no instance has a presence broadcast pending.
    for client in [sender_b, *through]:
        await client.wait_for_frame(
            lambda f: (
                f["type"] == "presence"
                and f["total_users"] == 2
                and f["anonymous"] == 2
            ),
            what="settled presence",
        )

    await asyncio.to_thread(own_redis.stop)
    last = await sender_b.send_message("during the outage")
    await asyncio.to_thread(own_redis.start)  # returns once Redis answers

    for client in through:
        if client.closed:  # allowed: clients resume after any close
            again, _ = await open_retrying(
                clients, client.app, slug, token=client.token,
                after=client.contiguous_seq(), name=f"{client.name}-again",
            )  # fmt: skip
            await again.wait_for_seqs(range(1, last + 1), earlier=(client,))
        else:
            await client.wait_for_seqs(range(1, last + 1), timeout=6)


async def test_http_post_during_an_outage_is_stored(
    own_redis: RedisServer, pair: tuple[AppProcess, AppProcess], deployment: Deployment
) -> None:
    """A POST answered 201 while Redis is down is in the room: the history
    API of either instance returns it, once, with its seq and body, during
    the outage and after Redis is back."""
    a, b = pair
    name = deployment.usernames[3]
    token = deployment.tokens[name]
    slug = unique_slug("outage-http")
    create_room(a, token, slug)
    body = "posted while Redis is down"

    await asyncio.to_thread(own_redis.stop)
    status, posted = await ahttp_json(
        b,
        "POST",
        f"/api/rooms/{slug}/messages/",
        token=token,
        body={"body": body},
    )
    assert status == 201, posted
    assert (posted["seq"], posted["author"], posted["body"]) == (1, name, body)

    async def stored() -> list[tuple[int, str, str]]:
        rows = []
        for app in pair:
            status, page = await ahttp_json(
                app, "GET", f"/api/rooms/{slug}/messages/?after=0", token=token
            )
            assert status == 200, page
            rows += [(m["seq"], m["author"], m["body"]) for m in page["messages"]]
        return rows

    assert await stored() == [(1, name, body)] * 2  # once on each instance
    await asyncio.to_thread(own_redis.start)
    assert await stored() == [(1, name, body)] * 2


async def test_the_first_handshakes_after_redis_returns_succeed(
    own_redis: RedisServer,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
) -> None:
    """Once Redis answers again, handshakes succeed at the first attempt.

    Four users connect at once before the outage, so each instance's pool
    holds several connections, as it does under real traffic. Afterwards
    four other users connect at once: each joins a channel-layer group of
    its own (its user group), which needs a pool connection.
    """
    a, _ = pair
    names = deployment.usernames
    warm = [deployment.tokens[name] for name in names[4:8]]
    fresh = [deployment.tokens[name] for name in names[8:12]]
    slug = unique_slug("outage-pool")
    create_room(a, warm[0], slug)
    for app in pair:
        await asyncio.gather(
            *(clients.open(app, slug, token=token, name="warm") for token in warm)
        )

    await asyncio.to_thread(own_redis.stop)
    await asyncio.to_thread(own_redis.start)  # returns once Redis answers

    refused = []
    for app in pair:
        results = await asyncio.gather(
            *(
                clients.open(app, slug, token=token, name=f"fresh@{app.name}")
                for token in fresh
            ),
            return_exceptions=True,
        )
        refused += [str(r) for r in results if isinstance(r, BaseException)]
    assert not refused, refused


async def test_dropped_subscriptions_are_noticed_and_their_clients_catch_up(
    own_redis: RedisServer,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
) -> None:
    """Redis keeps running but drops the instances' subscriptions (as it
    does to a subscriber past its output-buffer limit), and for a moment
    takes no new connections, so they cannot subscribe again at once.
    channels_redis subscribes again by itself, silently, and what was
    published meanwhile never arrives live. Each hub notices by its probes
    and has its connections catch up from the database, though nothing
    later reveals the gap.
    """
    a, b = pair
    tokens = deployment.tokens
    names = deployment.usernames
    slug = unique_slug("dropped-subscription")
    create_room(a, tokens[names[0]], slug)
    listener = await clients.open(a, slug, name="anonymous@A")
    sender = await clients.open(b, slug, token=tokens[names[1]], name="sender@B")
    first = await sender.send_message("before the drop")
    await listener.wait_for_seqs({first})

    with own_redis.client() as redis_client:
        default = redis_client.config_get("maxclients")["maxclients"]
        connected = len(redis_client.client_list())
        subscribers = len(redis_client.client_list(_type="pubsub"))
        assert subscribers == 2  # one per instance
        redis_client.config_set("maxclients", connected - subscribers)
        try:
            redis_client.client_kill_filter(_type="pubsub")
            missed = await sender.send_message("while nobody is subscribed")
        finally:
            redis_client.config_set("maxclients", default)

    await listener.wait_for_seqs(range(first, missed + 1), timeout=10)
    live = await sender.send_message("after the drop")
    await listener.wait_for_seqs(range(first, live + 1))


async def test_clients_connect_send_and_read_while_redis_is_down(
    own_redis: RedisServer,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    clients: Clients,
) -> None:
    """Degraded, not down: with Redis unreachable a handshake still gets its
    welcome, its replay from the database and a presence frame marked
    unavailable; sends are stored and acknowledged, history answers, and
    /healthz stays 200. Once Redis is back, the messages sent meanwhile
    reach the other instance's clients and presence is whole again, with
    no restart.
    """
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    slug = unique_slug("degraded")
    create_room(a, tokens[names[0]], slug)
    seeded = await clients.open(a, slug, token=tokens[names[0]], name="seeder")
    first = await seeded.send_message("before the outage")
    listener_b = await clients.open(b, slug, name="anonymous@B")

    await asyncio.to_thread(own_redis.stop)
    started = time.monotonic()
    user = await clients.open(a, slug, token=tokens[names[1]], after=0, name="user@A")
    anonymous = await clients.open(a, slug, name="anonymous@A")
    handshake_s = time.monotonic() - started
    assert user.seqs() == [first]
    for client in (user, anonymous):
        presence = next(f for f in client.frames if f["type"] == "presence")
        assert presence["available"] is False, presence
    during = await user.send_message("sent while Redis is down")
    history = await user.request({"type": "history", "after": 0}, is_type("history"))
    assert [m["seq"] for m in history["messages"]] == [first, during]
    status, health = await ahttp_json(a, "GET", "/healthz")
    assert (status, health) == (200, {"status": "ok"})

    await asyncio.to_thread(own_redis.start)
    await listener_b.wait_for_seqs({during}, timeout=15)
    # Presence recovers by itself: a later snapshot counts both users.
    await user.wait_for_frame(
        lambda f: (
            f["type"] == "presence"
            and "available" not in f
            and set(f["users"]) >= {names[0], names[1]}
        ),
        timeout=15,
        what="presence available again",
    )
    report("handshakes while Redis is down", {"two_handshakes_s": f"{handshake_s:.2f}"})
