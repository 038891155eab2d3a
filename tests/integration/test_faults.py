"""The fault suite: real processes fail mid-traffic, and nothing acknowledged
is lost or stays invisible.

Each test breaks one thing (an instance, Redis, PostgreSQL, a client's
patience) while clients send, and checks what a user would: every ack's
message is stored once and reaches every open client of the instances
still serving, with no help from the client beyond what docs/protocol.md
asks of it (resend unacknowledged sends; resume after a close); clients
recover by themselves; /readyz names what is failing, and only that, and
answers 200 again afterwards. Each prints its figures (``pytest -s``);
docs/reliability.md records them.

The module has a Redis and a PostgreSQL of its own, so it can kill them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room
from harness.postgres import PostgresCluster
from harness.redis_server import RedisServer
from harness.waiting import async_wait_until
from harness.ws import Clients, WsClient, is_type, wait_for_readyz
from soak.checks import scan_log
from tests.integration.common import (
    report,
    throwaway_postgres,
    throwaway_redis,
    unique_slug,
)
from tests.support.faults import DIE_BEFORE_PUBLISH

pytestmark = pytest.mark.integration

USERS = 8
DELIVERY_BOUND_SECONDS = 5.0
SEND_INTERVAL_SECONDS = 0.1
# How long traffic runs before, during and after each fault: a load
# parameter, not a wait for anything.
TRAFFIC_SECONDS = 1.5
FAULT_SECONDS = 3.0
ENV = {"SWITCHBOARD_SEND_BURST": "100", "SWITCHBOARD_SEND_RATE_PER_SECOND": "50"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    """The module's own cluster (it is restarted here)."""
    yield from throwaway_postgres()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """The module's own Redis (it is killed and paused here)."""
    yield from throwaway_redis()


@pytest.fixture(scope="module")
def pair(
    module_launcher: Launcher, deployment: Deployment
) -> tuple[AppProcess, AppProcess]:
    a, b = module_launcher.launch("a", "b", env=ENV)
    deployment.fetch_tokens(a, b)
    return a, b


@pytest.fixture(autouse=True)
async def services_up(redis_server: RedisServer, postgres: PostgresCluster) -> None:
    """Each test starts with Redis and PostgreSQL running."""
    if not redis_server.running:
        await asyncio.to_thread(redis_server.start)
    if not postgres.running:
        await asyncio.to_thread(postgres.start)


# --- traffic -------------------------------------------------------------------


@dataclass
class Readiness:
    """/readyz of each instance, sampled until stopped: (seconds, status, failing)."""

    apps: list[AppProcess]
    samples: dict[str, list[tuple[float, int, list[str]]]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    async def run(self) -> None:
        while True:
            for app in self.apps:
                try:
                    status, body = await ahttp_json(app, "GET", "/readyz", timeout=5)
                except OSError:
                    continue  # the instance is gone: nothing to sample
                failing = body.get("failing", []) if isinstance(body, dict) else []
                self.samples.setdefault(app.name, []).append(
                    (time.monotonic() - self.started, status, failing)
                )
            await asyncio.sleep(0.2)

    def failing_parts(self) -> set[str]:
        return {p for s in self.samples.values() for _, _, f in s for p in f}

    def last_statuses(self) -> dict[str, int]:
        return {name: s[-1][1] for name, s in self.samples.items()}


class Sender:
    """A signed-in client that sends on a clock and, as docs/protocol.md
    asks, resends with the same client_id after internal_error or on a new
    connection until every send is acknowledged."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.bodies: dict[str, str] = {}  # client_id -> body, every send
        self.acked: dict[str, int] = {}
        self.resends = 0
        self._answered_errors = 0

    @property
    def pending(self) -> dict[str, str]:
        self.acked.update(self.client.acks)
        return {c: b for c, b in self.bodies.items() if c not in self.acked}

    async def resend_failed(self) -> None:
        errors = self.client.errors()
        for error in errors[self._answered_errors :]:
            client_id = error.get("client_id")
            if error.get("code") == "internal_error" and client_id in self.pending:
                self.resends += 1
                await self.client.send(
                    {"type": "send", "body": self.bodies[client_id],
                     "client_id": client_id}
                )  # fmt: skip
        self._answered_errors = len(errors)

    async def send_forever(self) -> None:
        n = 0
        while True:
            if not self.client.closed:
                n += 1
                client_id = await self.client.post(f"{self.client.name} #{n}")
                self.bodies[client_id] = self.client.sent[client_id]
                await self.resend_failed()
            await asyncio.sleep(SEND_INTERVAL_SECONDS)

    async def move_to(self, clients: Clients, app: AppProcess) -> None:
        """Resume on ``app`` after the connection ended; resend what is pending."""
        old = self.client
        self.acked.update(old.acks)
        self.client = await clients.resume(app, old)
        self._answered_errors = 0
        for client_id, body in self.pending.items():
            self.resends += 1
            await self.client.send(
                {"type": "send", "body": body, "client_id": client_id}
            )

    async def settle(self) -> None:
        """Resend until every send is acknowledged (30 s at most)."""

        async def all_acked() -> bool:
            await self.resend_failed()
            return not self.pending

        await async_wait_until(
            all_acked, timeout=30, interval=0.2,
            message=f"{self.client.name}: every send acked",
        )  # fmt: skip


@dataclass
class Outcome:
    acked: int
    resends: int
    last_seq: int
    stored: int
    gap_fill_requests: int


async def run_traffic(
    fault: Callable[[], Awaitable[None]],
    senders: list[Sender],
    readiness: Readiness,
) -> None:
    """Traffic before, while ``fault()`` runs, and after it."""
    loops = [asyncio.create_task(s.send_forever()) for s in senders]
    sampler = asyncio.create_task(readiness.run())
    try:
        await asyncio.sleep(TRAFFIC_SECONDS)
        await fault()
        await asyncio.sleep(TRAFFIC_SECONDS)
    finally:
        for task in loops:
            task.cancel()
        for sender in senders:
            with contextlib.suppress(AssertionError):
                await sender.settle()
        sampler.cancel()
    await asyncio.gather(*loops, sampler, return_exceptions=True)


def stored_messages(
    postgres: PostgresCluster, deployment: Deployment, slug: str
) -> dict[str, tuple[int, str]]:
    """client_id -> (seq, body) of every message stored in ``slug``."""
    database = deployment.env["DATABASE_URL"].rsplit("/", 1)[-1]
    with postgres.connect(database) as conn:
        rows = conn.execute(
            "SELECT m.client_id, m.seq, m.body FROM core_message m"
            " JOIN core_room r ON r.id = m.room_id WHERE r.slug = %s",
            (slug,),
        ).fetchall()
    stored = {client_id: (seq, body) for client_id, seq, body in rows}
    assert len(stored) == len(rows), "a client_id stored twice"
    return stored


async def verify(
    postgres: PostgresCluster,
    deployment: Deployment,
    slug: str,
    senders: list[Sender],
    listeners: list[WsClient],
) -> Outcome:
    """Every send acknowledged, stored once as acknowledged, and held by
    every listener still open, with no later message to reveal a gap."""
    for sender in senders:
        assert not sender.pending, f"{sender.client.name}: never acked"
    stored = stored_messages(postgres, deployment, slug)
    acked = {c: s for sender in senders for c, s in sender.acked.items()}
    bodies = {c: b for sender in senders for c, b in sender.bodies.items()}
    for client_id, seq in acked.items():
        assert stored.get(client_id) == (seq, bodies[client_id]), client_id
    last_seq = max(seq for seq, _ in stored.values())
    assert sorted(seq for seq, _ in stored.values()) == list(range(1, last_seq + 1))
    gap_fills = 0
    for listener in listeners:
        # Live delivery and the server's catch-ups first; then, for a hole
        # that later messages reveal, the client's own gap fill (step 2 of
        # docs/protocol.md 9.3), counted.
        try:
            await listener.wait_for_seqs(
                range(1, last_seq + 1), timeout=DELIVERY_BOUND_SECONDS + 1
            )
        except AssertionError:
            gap_fills += await fill_gaps(listener, last_seq)
        assert listener.held_seqs() >= set(range(1, last_seq + 1)), listener.name
    return Outcome(
        len(acked), sum(s.resends for s in senders), last_seq, len(stored), gap_fills
    )


async def fill_gaps(listener: WsClient, last_seq: int) -> int:
    """Ask for history above the contiguous seq until nothing is missing;
    how many requests it took."""
    requests = 0
    while listener.contiguous_seq() < last_seq and requests < 20:
        requests += 1
        after = listener.contiguous_seq()
        await listener.request(
            {"type": "history", "after": after, "limit": 100}, is_type("history")
        )
    return requests


async def open_room(
    pair: tuple[AppProcess, ...], deployment: Deployment, clients: Clients, tag: str
) -> tuple[str, list[Sender], list[WsClient]]:
    """A room with a sender and an anonymous listener on each instance."""
    tokens, names = deployment.tokens, deployment.usernames
    slug = unique_slug(tag)
    create_room(pair[0], tokens[names[0]], slug)
    senders, listeners = [], []
    for n, app in enumerate(pair):
        client = await clients.open(
            app, slug, token=tokens[names[1 + n]], name=f"sender@{app.name}"
        )
        senders.append(Sender(client))
        listeners.append(await clients.open(app, slug, name=f"listener@{app.name}"))
    return slug, senders, listeners


async def ready_again(apps: tuple[AppProcess, ...] | list[AppProcess]) -> float:
    """Seconds until every instance's /readyz answers 200 again."""
    started = time.monotonic()
    for app in apps:
        assert await wait_for_readyz(app, 200, timeout=20) == {"status": "ok"}
    return time.monotonic() - started


def figures(outcome: Outcome, readiness: Readiness, **more: object) -> dict:
    return {
        "acked": outcome.acked,
        "resends": outcome.resends,
        "last_seq": outcome.last_seq,
        "client_gap_fill_requests": outcome.gap_fill_requests,
        "readyz_failing": sorted(readiness.failing_parts()),
        **more,
    }


# --- the faults ------------------------------------------------------------------


async def survive(
    fault: Callable[[], Awaitable[None]],
    failing: set[str],
    title: str,
    pair: tuple[AppProcess, AppProcess],
    postgres: PostgresCluster,
    deployment: Deployment,
    clients: Clients,
) -> None:
    """Traffic through ``fault`` on both instances of ``pair``; nothing lost
    or invisible, /readyz named exactly ``failing`` and is 200 again, and no
    ERROR line or traceback in the instances' logs: a survived outage is a
    WARNING, not an alert."""
    log_start = [len(app.log_text()) for app in pair]
    slug, senders, listeners = await open_room(pair, deployment, clients, "fault")
    readiness = Readiness(list(pair))
    await run_traffic(fault, senders, readiness)
    outcome = await verify(postgres, deployment, slug, senders, listeners)
    ready_s = await ready_again(pair)
    assert readiness.failing_parts() == failing
    for app, start in zip(pair, log_start, strict=True):
        app.check_alive()
        logged = scan_log(app.log_text()[start:])
        assert (logged["error_lines"], logged["tracebacks"]) == (0, 0), logged
    report(title, figures(outcome, readiness, ready_again_s=f"{ready_s:.2f}"))


async def test_redis_killed_and_restarted_mid_traffic(
    pair: tuple[AppProcess, AppProcess], redis_server: RedisServer,
    postgres: PostgresCluster, deployment: Deployment, clients: Clients,
) -> None:  # fmt: skip
    async def fault() -> None:
        await asyncio.to_thread(redis_server.kill)
        await asyncio.sleep(FAULT_SECONDS)
        await asyncio.to_thread(redis_server.start)

    await survive(fault, {"channel_layer"}, "Redis SIGKILLed for 3 s mid-traffic",
                  pair, postgres, deployment, clients)  # fmt: skip


async def test_redis_paused_longer_than_the_publish_timeout(
    pair: tuple[AppProcess, AppProcess], redis_server: RedisServer,
    postgres: PostgresCluster, deployment: Deployment, clients: Clients,
) -> None:  # fmt: skip
    """SIGSTOP: connections stay open and commands hang, which no refused
    connection shows; publishes time out after PUBLISH_TIMEOUT_SECONDS."""

    async def fault() -> None:
        redis_server.pause()
        try:
            await asyncio.sleep(FAULT_SECONDS)
        finally:
            redis_server.resume()

    await survive(fault, {"channel_layer"}, "Redis paused (SIGSTOP) for 3 s",
                  pair, postgres, deployment, clients)  # fmt: skip


async def test_postgres_restarted_mid_traffic(
    pair: tuple[AppProcess, AppProcess], postgres: PostgresCluster,
    deployment: Deployment, clients: Clients,
) -> None:  # fmt: skip
    """Sends fail while PostgreSQL is down; clients resend them, and each
    is stored once when it is back."""

    async def fault() -> None:
        await asyncio.to_thread(postgres.stop)
        await asyncio.sleep(FAULT_SECONDS)
        await asyncio.to_thread(postgres.start)

    await survive(fault, {"database"}, "PostgreSQL restarted (3 s down)",
                  pair, postgres, deployment, clients)  # fmt: skip


async def test_one_instance_killed_and_one_terminated_during_a_burst(
    pair: tuple[AppProcess, AppProcess], launcher: Launcher,
    postgres: PostgresCluster, deployment: Deployment, clients: Clients,
) -> None:  # fmt: skip
    """Senders on two doomed instances; one is SIGKILLed, the other
    SIGTERMed, mid-burst. Their clients resume on the survivors and resend
    what was not acknowledged; the survivors serve on, ready throughout."""
    doomed = launcher.launch("killed", "terminated", env=ENV)
    tokens, names = deployment.tokens, deployment.usernames
    slug = unique_slug("instances")
    create_room(pair[0], tokens[names[0]], slug)
    senders = [
        Sender(await clients.open(app, slug, token=tokens[names[3 + n]],
                                  name=f"sender@{app.name}"))
        for n, app in enumerate(doomed)
    ]  # fmt: skip
    listeners = [
        await clients.open(app, slug, name=f"listener@{app.name}") for app in pair
    ]
    readiness = Readiness(list(pair))

    async def fault() -> None:
        killed, terminated = doomed
        killed.kill()
        status, _ = await asyncio.to_thread(terminated.terminate)
        assert status == 0
        for sender, survivor in zip(senders, pair, strict=True):
            await sender.client.wait_closed(timeout=10)
            await sender.move_to(clients, survivor)

    await run_traffic(fault, senders, readiness)
    outcome = await verify(postgres, deployment, slug, senders, listeners)
    assert readiness.failing_parts() == set()
    report("one instance SIGKILLed, one SIGTERMed mid-burst",
           figures(outcome, readiness))  # fmt: skip


async def test_a_client_that_reconnects_50_times_in_a_row(
    pair: tuple[AppProcess, AppProcess], deployment: Deployment, clients: Clients,
) -> None:  # fmt: skip
    """Every reconnect is admitted and resumes exactly where the last left
    off; nothing of the 50 stays behind: presence counts the user out, and
    the user can still open as many connections as the limit allows."""
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    user = names[7]
    slug = unique_slug("reconnects")
    create_room(a, tokens[names[0]], slug)
    watcher = await clients.open(b, slug, name="watcher")
    held = 0
    started = time.monotonic()
    for n in range(50):
        client = await clients.open(
            (a, b)[n % 2], slug, token=tokens[user], after=held, name=f"again-{n}"
        )
        await client.catch_up()
        assert client.seqs() == list(range(held + 1, held + 1 + len(client.seqs())))
        if n % 10 == 0:
            await client.send_message(f"reconnect {n}")
        held = client.contiguous_seq(held)
        await client.close()
    elapsed = time.monotonic() - started
    assert held == 5
    await watcher.wait_for_frame(
        lambda f: f["type"] == "presence" and user not in f["users"],
        timeout=10, what=f"{user} counted out",
    )  # fmt: skip
    many = await asyncio.gather(
        *(clients.open(a, slug, token=tokens[user], name=f"at-once-{n}")
          for n in range(20))
    )  # fmt: skip
    assert len(many) == 20
    report(
        "one client reconnecting 50 times",
        {"seconds": f"{elapsed:.2f}", "per_reconnect_ms": f"{elapsed * 20:.0f}"},
    )


async def test_a_message_whose_publisher_died_reaches_quiet_clients_in_time(
    launcher: Launcher, pair: tuple[AppProcess, AppProcess], deployment: Deployment,
    clients: Clients,
) -> None:  # fmt: skip
    """The sender's instance dies after the commit and before the publish.
    Nothing is sent after it, yet clients on the other instance get the
    message within the delivery bound; the sender's retry finds it stored.
    """
    serving = pair[0]
    (dying,) = launcher.launch_each(
        {"dying": ENV}, application="tests.support.faults:die_before_publish"
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
