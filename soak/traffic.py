"""The soak's traffic: every client, the member removals, the Redis restart,
and the drain at the end.

Timeline of a run of T seconds (t = 0 when the first client connects):

- 0-5 s: clients connect, staggered; each then churns every 5-30 s;
- from min(30 s, T/5), about every 60 s: a member of the private room is
  removed through the HTTP API (their connections there must close with
  4403), stays out 2-5 s, and is added back;
- at 0.4 T: Redis is stopped (SIGTERM) and, 3 s later, started again on the
  same port with no data;
- at T: sending and churn stop; the drain polls PostgreSQL until every
  client is connected, holds its room up to ``last_seq`` and has every send
  acknowledged, or until a 60 s deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, defaultdict
from typing import Any

from soak import config
from soak.client import Pending, SoakClient
from soak.stack import Stack, room_slug

EXAMPLES = 40  # examples kept of each kind of unexpected thing
STAGGER_SECONDS = 5.0


class Tally:
    """Everything the clients counted, with examples of the unexpected."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.errors_expected: Counter[str] = Counter()
        self.errors_unexpected: Counter[str] = Counter()
        self.closes_expected: Counter[str] = Counter()
        self.closes_unexpected: Counter[str] = Counter()
        self.busy: Counter[str] = Counter()
        self.anomalies: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.ack_latencies: list[tuple[float, float]] = []
        self.unexpected_times: list[tuple[float, str]] = []  # (t, "close 1011")
        self.revocations = 0
        self.revocations_missed = 0
        self.revocation_seconds: list[float] = []

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def event(self, text: str, **details: Any) -> None:
        self.events.append({"t": round(self.clock(), 2), "event": text, **details})

    def _example(self, kind: str, client: SoakClient | None, detail: Any) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(
                {
                    "t": round(self.clock(), 2),
                    "kind": kind,
                    "client": client.name if client else None,
                    "instance": client.instance if client else None,
                    "detail": detail,
                }
            )

    def expected_error(self, code: str) -> None:
        self.errors_expected[code] += 1

    def unexpected_error(
        self, code: str, client: SoakClient, frame: dict[str, Any]
    ) -> None:
        self.errors_unexpected[code] += 1
        self.unexpected_times.append((self.clock(), f"error {code}"))
        self._example(f"error {code}", client, frame)

    def expected_close(self, key: str) -> None:
        self.closes_expected[key] += 1

    def unexpected_close(
        self, code: int | str, client: SoakClient, reason: str = ""
    ) -> None:
        self.closes_unexpected[str(code)] += 1
        self.unexpected_times.append((self.clock(), f"close {code}"))
        self._example(f"close {code}", client, reason)

    def busy_refusal(self, client: SoakClient) -> None:
        self.busy["4503"] += 1
        self._example("close 4503 (busy)", client, "")

    def anomaly(self, kind: str, client: SoakClient | None, detail: Any = "") -> None:
        self.anomalies[kind] += 1
        self._example(kind, client, detail)


class Traffic:
    """The clients and the events of one soak run."""

    def __init__(self, stack: Stack, duration: float, seed: int) -> None:
        self.stack = stack
        self.duration = duration
        # Seeded, for a load that can be replayed; nothing here is a secret.
        self.rng = random.Random(seed)  # noqa: S311
        self.t0 = time.monotonic()
        self.tally = Tally(self.elapsed)
        self.sending = True
        self.churning = True
        self.finished = False
        self._finished = asyncio.Event()
        self.sent: dict[str, dict[str, str]] = defaultdict(dict)
        self.acked: dict[str, dict[str, int]] = defaultdict(dict)
        self.removed: dict[str, asyncio.Event] = {}
        self.open_by_instance = [0] * len(stack.instances)
        self.removals: list[dict[str, Any]] = []
        self.redis_restart: dict[str, float] = {}
        self.drain: dict[str, Any] = {}
        self.views: dict[str, bool] = {}
        self.runners: list[asyncio.Task[None]] = []
        self.churn_stopped_at: float | None = None
        self.clients = self._clients()

    # --- who ------------------------------------------------------------------

    def _client_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))  # noqa: S311

    def _clients(self) -> list[SoakClient]:
        users = self.stack.usernames
        clients = []
        for n in range(config.HOT_CLIENTS):
            sender = n < config.HOT_SENDERS
            clients.append(
                SoakClient(
                    self,
                    name=f"hot-{n:02d}",
                    room=config.HOT_ROOM,
                    user=users[n % len(users)],
                    instance=n % 2,
                    rng=self._client_rng(),
                    send_seconds=config.HOT_SEND_SECONDS if sender else None,
                    pager=not sender,
                )
            )
        for r in range(config.ROOMS):
            for c in range(config.CLIENTS_PER_ROOM):
                sender = c == 0
                clients.append(
                    SoakClient(
                        self,
                        name=f"r{r:02d}-{c}",
                        room=room_slug(r),
                        user=users[(r * config.CLIENTS_PER_ROOM + c) % len(users)],
                        instance=(r + c) % 2,
                        rng=self._client_rng(),
                        send_seconds=config.ROOM_SEND_SECONDS if sender else None,
                        pager=not sender,
                    )
                )
        for m in range(config.PRIVATE_MEMBERS):
            sender = m < config.PRIVATE_SENDERS
            clients.append(
                SoakClient(
                    self,
                    name=f"priv-{m}",
                    room=config.PRIVATE_ROOM,
                    user=users[m],
                    instance=m % 2,
                    rng=self._client_rng(),
                    send_seconds=config.PRIVATE_SEND_SECONDS if sender else None,
                    pager=not sender,
                )
            )
        for a in range(config.ANONYMOUS_READERS):
            clients.append(
                SoakClient(
                    self,
                    name=f"anon-{a}",
                    room=room_slug(a * 5 % config.ROOMS),
                    user=None,
                    instance=a % 2,
                    rng=self._client_rng(),
                    pager=True,
                )
            )
        return clients

    # --- time -------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the run is finished."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._finished.wait()

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.elapsed()))

    # --- what clients report ------------------------------------------------------

    def opened(self, client: SoakClient) -> None:
        if client.connected_instance is not None:
            self.open_by_instance[client.connected_instance] += 1
        self.tally.count("connections opened")

    def closed(self, client: SoakClient) -> None:
        if client.connected_instance is not None:
            self.open_by_instance[client.connected_instance] -= 1
            client.connected_instance = None

    def ledger_sent(self, client: SoakClient, client_id: str, body: str) -> None:
        self.sent[client.room][client_id] = body

    def ledger_ack(
        self, client: SoakClient, client_id: str, seq: int, pending: Pending | None
    ) -> None:
        earlier = self.acked[client.room].get(client_id)
        if earlier is not None and earlier != seq:
            self.tally.anomaly(
                "ack conflict (one client_id, two seqs)",
                client,
                {"client_id": client_id, "seqs": [earlier, seq]},
            )
        elif earlier is None:
            self.acked[client.room][client_id] = seq
        if pending is not None:
            self.tally.count("acks")
            self.tally.ack_latencies.append(
                (self.elapsed(), time.monotonic() - pending.first_sent)
            )
        else:
            self.tally.count("acks of resends")

    def is_removed(self, user: str | None) -> bool:
        return user is not None and user in self.removed

    async def access_back(self, user: str | None) -> None:
        event = self.removed.get(user or "")
        if event is not None:
            await event.wait()

    # --- the run ---------------------------------------------------------------------

    async def run(self) -> None:
        """Traffic for ``duration``, the events, then the drain; the clients
        stay connected until ``finish()``."""
        self.t0 = time.monotonic()
        self.tally.event("traffic starts", clients=len(self.clients))
        step = STAGGER_SECONDS / max(1, len(self.clients))
        self.runners = [
            asyncio.create_task(self._start(client, n * step), name=client.name)
            for n, client in enumerate(self.clients)
        ]
        events = [
            asyncio.create_task(self._removals(), name="removals"),
            asyncio.create_task(self._restart_redis(), name="redis restart"),
        ]
        try:
            await self.sleep_until(self.duration)
            self.sending = False
            self.churning = False
            self.churn_stopped_at = self.elapsed()
            self.tally.event("sending and churn stop")
            await asyncio.gather(*events)
            await self._drain()
        finally:
            for task in events:
                task.cancel()

    async def finish(self) -> None:
        """Note who is connected, then close every client and wait for it."""
        self.views = {client.name: client.connected for client in self.clients}
        self.finished = True
        self._finished.set()
        for event in self.removed.values():
            event.set()
        await asyncio.gather(*(client.close() for client in self.clients))
        if not self.runners:
            return
        done, stuck = await asyncio.wait(self.runners, timeout=30)
        for task in stuck:
            task.cancel()
            self.tally.anomaly("client did not stop", None, task.get_name())
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                self.tally.anomaly(
                    "client task failed", None, repr(task.exception())[:300]
                )

    async def _start(self, client: SoakClient, delay: float) -> None:
        await asyncio.sleep(delay)
        await client.run()

    # --- events ---------------------------------------------------------------------

    async def _restart_redis(self) -> None:
        """Stop Redis (SIGTERM closes every client), start it on the same port."""
        redis = self.stack.redis
        if redis is None:
            return
        await self.sleep_until(config.REDIS_RESTART_AT * self.duration)
        self.redis_restart["stopping_at"] = self.elapsed()
        self.redis_restart["stopping_wall"] = time.time()
        self.tally.event("Redis stopping")
        await asyncio.to_thread(redis.stop)
        self.redis_restart["stopped_at"] = self.elapsed()
        await asyncio.sleep(config.REDIS_DOWN_SECONDS)  # the outage itself
        await asyncio.to_thread(redis.start)
        self.redis_restart["started_at"] = self.elapsed()
        self.redis_restart["started_wall"] = time.time()
        self.tally.event("Redis answering again")

    async def _removals(self) -> None:
        victims = self.stack.usernames[1 : config.PRIVATE_MEMBERS]
        t = min(config.REMOVAL_FIRST_SECONDS, 0.2 * self.duration)
        number = 0
        while t < self.duration - config.REMOVAL_QUIET_TAIL_SECONDS:
            await self.sleep_until(t)
            await self._remove_and_add_back(victims[number % len(victims)], number)
            number += 1
            t = max(self.elapsed(), t) + config.REMOVAL_INTERVAL_SECONDS
            t += self.rng.uniform(
                -config.REMOVAL_JITTER_SECONDS, config.REMOVAL_JITTER_SECONDS
            )

    async def _remove_and_add_back(self, user: str, number: int) -> None:
        """DELETE the membership, see the user's connections to the room close
        with 4403, wait 2-5 s, POST it back, let them reconnect."""
        owner = self.stack.tokens[self.stack.usernames[0]]
        room = config.PRIVATE_ROOM
        targets = [c for c in self.clients if c.room == room and c.user == user]
        for client in targets:
            client.closed_4403_at = None
        record: dict[str, Any] = {"user": user, "removed_at": round(self.elapsed(), 2)}
        self.removed[user] = asyncio.Event()
        removed = time.monotonic()  # latency counts from the request
        status, body = await asyncio.to_thread(
            self.stack.http_json,
            number,
            "DELETE",
            f"/api/rooms/{room}/members/{user}/",
            token=owner,
        )
        record["delete_status"] = status
        if status != 204:
            self.tally.anomaly(
                "member removal refused", None, {"status": status, "body": body}
            )
        self.tally.event("member removed", user=user, status=status)
        deadline = removed + config.REVOKE_DEADLINE_SECONDS
        while not all(c.waiting_for_access for c in targets):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        missed = [c.name for c in targets if not c.waiting_for_access]
        latencies = [
            c.closed_4403_at - removed
            for c in targets
            if c.closed_4403_at is not None and c.closed_4403_at >= removed
        ]
        self.tally.revocations += len(targets) - len(missed)
        self.tally.revocations_missed += len(missed)
        self.tally.revocation_seconds += latencies
        record["closed_4403_s"] = [round(x, 3) for x in latencies]
        record["not_closed"] = missed
        if missed:
            self.tally.anomaly(
                "removed member still connected",
                None,
                {"user": user, "clients": missed},
            )
        await asyncio.sleep(self.rng.uniform(*config.REMOVED_SECONDS))  # stays out
        status, body = await asyncio.to_thread(
            self.stack.http_json,
            number + 1,
            "POST",
            f"/api/rooms/{room}/members/",
            token=owner,
            body={"username": user},
        )
        record["add_status"] = status
        record["added_back_at"] = round(self.elapsed(), 2)
        if status != 201:
            self.tally.anomaly(
                "member re-add refused", None, {"status": status, "body": body}
            )
        event = self.removed.pop(user)
        event.set()
        self.tally.event("member added back", user=user, status=status)
        self.removals.append(record)

    # --- the end ----------------------------------------------------------------------

    async def _drain(self) -> None:
        """Poll until every client is connected, holds its room up to
        last_seq and has nothing unacknowledged; or until the deadline."""
        started = time.monotonic()
        deadline = started + config.DRAIN_DEADLINE_SECONDS
        while True:
            last_seq = await asyncio.to_thread(self.stack.read_last_seqs)
            behind = [c for c in self.clients if not c.caught_up(last_seq[c.room])]
            if not behind or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        self.drain = {
            "seconds": round(time.monotonic() - started, 2),
            "complete": not behind,
            "behind": len(behind),
            "behind_examples": [
                {
                    "client": c.name,
                    "room": c.room,
                    "connected": c.connected,
                    "contiguous": c.timeline.contiguous,
                    "known": c.timeline.known,
                    "last_seq": last_seq[c.room],
                    "pending": len(c.pending),
                }
                for c in behind[:10]
            ],
        }
        self.tally.event(
            "drain ends", seconds=self.drain["seconds"], behind=self.drain["behind"]
        )

    def unacked_at_end(self) -> int:
        return sum(len(client.pending) for client in self.clients)

    def unacked_examples(self) -> list[dict[str, Any]]:
        return [
            {
                "client": client.name,
                "client_id": client_id,
                "attempts": pending.attempts,
                "age_s": round(time.monotonic() - pending.first_sent, 2),
                "connected": self.views.get(client.name),
            }
            for client in self.clients
            for client_id, pending in client.pending.items()
        ][:10]
