"""The ``storm`` scenario's clients, inside the load generator.

A deploy on App Platform SIGTERMs an instance, and every client of it
reconnects at once to the others. Here stayers and a publisher sit on
instance A and movers on instance B; the orchestrator SIGTERMs B, and each
mover resumes on A as docs/protocol.md tells a client to: a random wait
within the shutdown's retry window, ``?after=`` the highest seq it has seen,
a random moment within a busy server's ``retry_window_ms`` (4503), at least
a limit's ``retry_after_ms`` (4429),
and full-jitter exponential backoff after any other failure.

Commands (``Generator.handle``): ``storm_begin`` connects everyone, starts
publishing and says when SIGTERM is due; ``storm_finish`` is told when it
was sent, waits for the storm to end, and returns what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import probes
from bench.stats import latency_summary, percentile
from bench.wsclient import HandshakeFailed, WsClient, open_client

INSTANCE_A, INSTANCE_B = 0, 1
# W, the shutdown's retry window, when the close reason names none.
DEFAULT_RETRY_WINDOW_SECONDS = 5.0  # a shutdown without a window (uvicorn: 1012)
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 5.0
REFUSAL_CODES = (4503, 4429)  # server busy, a limit: both say when to retry
REFUSED = {str(code) for code in REFUSAL_CODES}
# A client gives up on a handshake and its welcome after this long, as
# websockets' client does (open_timeout).
WELCOME_SECONDS = 10.0
# After the last send: for its ack (a server still catching up acks late;
# what is not acked by then is not counted as expected), then for everyone
# to receive it (``drain_seconds``).
ACK_WAIT_SECONDS = 15.0
CLOSE_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.05
# The generator's own loop is sampled this often: a late loop stamps frames
# late, so a spike in the stayers' latency may be the generator's, not A's.
LAG_PROBE_SECONDS = 0.01
# A message frame's seq, and its body's send time as JSON-escaped inside it
# (cheaper than json.loads for the bulk of the frames).
MESSAGE_PREFIX = b'{"type": "message"'
SEQ_FIELD = re.compile(rb'"seq": (\d+)')
SENT_FIELD = re.compile(rb'\\"t\\": ([0-9.e+-]+)')
RETRY_WINDOW = re.compile(r"retry_window_ms=(\d+)")
RETRY_AFTER = re.compile(r"retry_after_ms=(\d+)")
TEXT = "Deploy in progress: this instance is being replaced, please hold on."


# --- how long a client waits (docs/protocol.md §8) ------------------------------


def shutdown_wait(reason: str, rng: random.Random) -> float:
    """Before the first try after a lost connection: uniform in [0, W]."""
    found = RETRY_WINDOW.search(reason)
    window = int(found[1]) / 1000 if found else DEFAULT_RETRY_WINDOW_SECONDS
    return rng.uniform(0, window)


def retry_hint(reason: str) -> float | None:
    """A refusal's ``retry_after_ms``, in seconds; None if it names none."""
    found = RETRY_AFTER.search(reason)
    return None if found is None else int(found[1]) / 1000


def refusal_wait(hint: float, rng: random.Random) -> float:
    """After a 4503 or 4429: the hint x (1 + random)."""
    return hint * (1 + rng.random())


def backoff_wait(failures: int, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base x 2^failures)), failures from 0."""
    ceiling = BACKOFF_BASE_SECONDS * 2 ** min(failures, 16)
    return rng.uniform(0, min(BACKOFF_CAP_SECONDS, ceiling))


# --- clients --------------------------------------------------------------------


@dataclass(eq=False)
class Link:
    """One connection of a member: its welcome and its replay, when they came."""

    welcome: asyncio.Future[int]  # welcome.last_seq
    replay: asyncio.Future[float]  # arrival time of ``replayed``
    client: WsClient | None = None
    # An error frame's retry_after_ms, in seconds (a 4429 sends one first).
    error_hint: float | None = None


@dataclass(eq=False)
class Member:
    """A stayer (on A throughout) or a mover (on B until SIGTERM)."""

    role: str
    header: dict[str, str]
    rng: random.Random
    link: Link
    seen: set[int] = field(default_factory=set)
    highest: int = 0  # the highest seq seen: where a resume starts
    duplicates: int = 0
    joined: bool = False
    resumed_at: float | None = None
    closes: int = 0


@dataclass(frozen=True)
class Failure:
    """A reconnect that did not resume: why, and the server's retry hint."""

    label: str
    retry_seconds: float | None = None
    hint: float | None = None  # what a refusal named, before the jitter


def new_link(loop: asyncio.AbstractEventLoop) -> Link:
    return Link(welcome=loop.create_future(), replay=loop.create_future())


async def first_of(*futures: asyncio.Future[Any]) -> None:
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)


class Publisher:
    """One connection on A sending ``send`` frames at a fixed rate."""

    def __init__(self, step: int) -> None:
        self.client: WsClient | None = None
        self.step = step
        self.acks: dict[str, int] = {}  # client_id -> seq
        self.pending: dict[str, float] = {}  # client_id -> send time
        self.ack_latencies: array = array("d")  # pairs: send time, latency
        self.all_acked = asyncio.Event()
        self.sent = 0
        self.worst_lag = 0.0
        self.errors: Counter[str] = Counter()

    def on_text(self, client: WsClient, payload: bytes, now: float) -> None:
        if payload.startswith(MESSAGE_PREFIX):
            return
        frame = json.loads(payload)
        if frame.get("type") == "ack":
            client_id = frame.get("client_id")
            sent = self.pending.pop(client_id, None)
            if sent is not None:
                self.ack_latencies.extend((sent, now - sent))
            self.acks[client_id] = frame["seq"]
            if not self.pending:
                self.all_acked.set()
        elif frame.get("type") == "error":
            self.errors[f"publisher error frame: {frame.get('code')}"] += 1

    async def run(self, start: float, rate: float) -> None:
        """Send until cancelled, on schedule; each body carries its send time."""
        index = 0
        while True:
            due = start + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            self.worst_lag = max(self.worst_lag, now - due)
            assert self.client is not None
            if not self.client.is_open:
                self.errors["publisher connection closed"] += 1
                return
            body = json.dumps({"s": self.step, "k": index, "t": now, "text": TEXT})
            client_id = f"storm{self.step}-{index}"
            self.pending[client_id] = now
            self.all_acked.clear()
            frame = {"type": "send", "body": body, "client_id": client_id}
            self.client.send_text(json.dumps(frame))
            self.sent += 1
            index += 1

    async def settle(self, limit: float) -> None:
        """Wait up to ``limit`` s for the acks still outstanding."""
        if not self.pending:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self.all_acked.wait()


# --- the storm --------------------------------------------------------------------


class Storm:
    """Everyone in the storm's room, and what happened to them."""

    def __init__(self, *, rng: random.Random, step: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.rng = rng
        self.step = step
        self.instances: list[list[Any]] = []
        self.path = ""
        self.members: list[Member] = []
        self.movers: list[Member] = []
        self.publisher: Publisher | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.watcher: asyncio.Task[None] | None = None
        self.publishing: asyncio.Task[None] | None = None
        self.all_resumed = asyncio.Event()
        self.resumed = 0
        self.sigterm_planned = 0.0
        self.give_up_seconds = 0.0
        self.window_end = 0.0
        self.stayer_latencies: array = array("d")  # pairs: send time, latency
        self.generator_lags: array = array("d")  # pairs: when, how late
        self.lag_probe: asyncio.Task[None] | None = None
        self.join_errors: Counter[str] = Counter()
        self.join_refusals: Counter[str] = Counter()  # retried, by role and code
        self.attempts: Counter[str] = Counter()  # by role
        self.refusals: Counter[str] = Counter()  # by close code
        self.hints: array = array("d")  # refusals' window or wait, seconds
        self.unhinted: Counter[str] = Counter()  # refusals that gave none
        self.failures: Counter[str] = Counter()  # by cause
        self.b_closes: Counter[str] = Counter()  # movers' codes from B
        self.b_reasons: dict[str, str] = {}
        self.b_close_times: list[float] = []
        self.later_closes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.cpu: dict[str, Any] = {}

    # --- frames in --------------------------------------------------------------

    def on_text(self, client: WsClient, payload: bytes, now: float) -> None:
        member: Member = client.tag
        if payload.startswith(MESSAGE_PREFIX):
            self._message(member, payload, now)
            return
        frame = json.loads(payload)
        kind = frame.get("type")
        link = member.link
        if kind == "welcome":
            if not member.joined:  # the first connection starts from now
                member.highest = max(member.highest, frame["last_seq"])
            if not link.welcome.done():
                link.welcome.set_result(frame["last_seq"])
        elif kind == "replayed":
            if not link.replay.done():
                link.replay.set_result(now)
        elif kind == "error":
            self.errors[f"error frame: {frame.get('code')}"] += 1
            if isinstance(frame.get("retry_after_ms"), int):
                link.error_hint = frame["retry_after_ms"] / 1000

    def _message(self, member: Member, payload: bytes, now: float) -> None:
        found = SEQ_FIELD.search(payload)
        if found is None:
            self.errors["message without seq"] += 1
            return
        seq = int(found[1])
        if seq in member.seen:
            member.duplicates += 1
            return
        member.seen.add(seq)
        member.highest = max(member.highest, seq)
        if member.role != "stayer":
            return
        sent = SENT_FIELD.search(payload)
        if sent is not None:
            at = float(sent[1])
            self.stayer_latencies.extend((at, now - at))

    # --- joining ------------------------------------------------------------------

    async def begin(
        self,
        *,
        instances: list[list[Any]],
        path: str,
        headers: list[dict[str, str]],
        stayers: int,
        movers: int,
        concurrency: int,
        handshake_seconds: float,
        budget_seconds: float,
        rate: float,
        before_seconds: float,
        give_up_seconds: float,
        after_seconds: float,
        pids: list[int],
        redis_pid: int | None,
        db_pid: int | None,
    ) -> dict[str, Any]:
        """Connect everyone, start publishing; SIGTERM is due at ``sigterm_at``."""
        self.instances = instances
        self.path = path
        started = time.monotonic()
        await self._join_publisher(headers[0], handshake_seconds)
        planned = [("stayer", INSTANCE_A)] * stayers + [("mover", INSTANCE_B)] * movers
        gate = asyncio.Semaphore(concurrency)
        deadline = started + budget_seconds
        joined = await asyncio.gather(
            *(
                self._join(role, instance, headers[i % len(headers)], gate, deadline,
                           handshake_seconds)
                for i, (role, instance) in enumerate(planned)
            )
        )  # fmt: skip
        self.members = [member for member in joined if member is not None]
        self.movers = [m for m in self.members if m.role == "mover"]
        if not self.movers:
            self.all_resumed.set()
        self.tasks = [asyncio.create_task(self._follow(m)) for m in self.members]
        self.lag_probe = asyncio.create_task(self._probe_lag())
        start = time.monotonic() + 0.1
        assert self.publisher is not None
        self.publishing = asyncio.create_task(self.publisher.run(start, rate))
        self.sigterm_planned = start + before_seconds
        self.give_up_seconds = give_up_seconds
        self.loop.call_at(
            self._loop_time(self.sigterm_planned),
            probes.sample_cpu, self.cpu, "t0", pids, redis_pid, db_pid,
        )  # fmt: skip
        self.watcher = asyncio.create_task(
            self._watch(give_up_seconds, after_seconds, pids, redis_pid, db_pid)
        )
        return {
            "sigterm_at": self.sigterm_planned,
            "stayers": len(self.members) - len(self.movers),
            "movers": len(self.movers),
            "join_errors": dict(self.join_errors),
            "join_refusals": dict(self.join_refusals),
            "connect_seconds": round(time.monotonic() - started, 2),
        }

    async def _probe_lag(self) -> None:
        while True:
            due = time.monotonic() + LAG_PROBE_SECONDS
            await asyncio.sleep(LAG_PROBE_SECONDS)
            now = time.monotonic()
            self.generator_lags.extend((now, max(0.0, now - due)))

    def _loop_time(self, monotonic_at: float) -> float:
        return self.loop.time() + (monotonic_at - time.monotonic())

    async def _join_publisher(self, header: dict[str, str], seconds: float) -> None:
        host, port = self.instances[INSTANCE_A]
        self.publisher = Publisher(self.step)
        self.publisher.client = await open_client(
            seconds,
            host=host,
            port=port,
            path=self.path,
            headers=header,
            on_text=self.publisher.on_text,
            rng=random.Random(self.rng.random()),
        )

    async def _join(
        self,
        role: str,
        instance: int,
        header: dict[str, str],
        gate: asyncio.Semaphore,
        deadline: float,
        seconds: float,
    ) -> Member | None:
        """A first connection, without ``?after=``; None if it failed."""
        member = Member(
            role=role,
            header=header,
            rng=random.Random(self.rng.random()),
            link=new_link(self.loop),
        )
        while True:
            async with gate:
                if time.monotonic() > deadline:
                    self.join_errors["skipped: connect budget spent"] += 1
                    return None
                failure = await self._open(member, instance, self.path, seconds)
            if failure is None:
                break
            if failure.retry_seconds is None:
                self.join_errors[f"{role}: {failure.label}"] += 1
                return None
            # Busy or limited: retry when told, as a client would.
            self.join_refusals[f"{role}: {failure.label}"] += 1
            member.link = new_link(self.loop)
            await asyncio.sleep(failure.retry_seconds)
        member.joined = True
        return member

    async def _open(
        self, member: Member, instance: int, path: str, seconds: float
    ) -> Failure | None:
        """Connect and wait for the welcome; a ``Failure`` says why not."""
        host, port = self.instances[instance]
        link = member.link
        try:
            async with asyncio.timeout(seconds):
                link.client = await open_client(
                    seconds,
                    tag=member,
                    host=host,
                    port=port,
                    path=path,
                    headers=member.header,
                    on_text=self.on_text,
                    rng=member.rng,
                )
                await first_of(link.welcome, link.client.done)
        except HandshakeFailed as exc:
            label = f"HTTP {exc.status}" if exc.status else "no HTTP answer"
            return Failure(label)
        except (OSError, TimeoutError) as exc:
            if link.client is not None:
                link.client.abort()
            return Failure(type(exc).__name__)
        if not link.welcome.done():
            return self._closed_early(link)
        return None

    def _closed_early(self, link: Link) -> Failure:
        """A connection that ended before it was resumed: refusal or failure.

        A refusal's hint is its close reason's, else its error frame's.
        """
        assert link.client is not None
        code = link.client.close_code or 1006
        if code not in REFUSAL_CODES:
            return Failure(str(code))
        if code == 4503:  # busy: retry within the window it names
            found = RETRY_WINDOW.search(link.client.close_reason or "")
            hint = None if found is None else int(found[1]) / 1000
            wait = None if hint is None else self.rng.uniform(0, hint)
        else:  # a limit: at least its retry_after
            hint = retry_hint(link.client.close_reason) or link.error_hint
            wait = None if hint is None else refusal_wait(hint, self.rng)
        return Failure(str(code), wait, hint)

    # --- moving -------------------------------------------------------------------

    async def _follow(self, member: Member) -> None:
        """After each lost connection, resume on A until resumed again."""
        while True:
            client = member.link.client
            assert client is not None
            await client.done
            wait = self._lost(member, client)
            failures = 0
            while True:
                await asyncio.sleep(wait)
                failure = await self._resume(member)
                if failure is None:
                    break
                if failure.label in REFUSED:
                    self.refusals[failure.label] += 1
                    if failure.hint is None:
                        self.unhinted[failure.label] += 1  # backs off below
                    else:
                        self.hints.append(failure.hint)
                else:
                    self.failures[failure.label] += 1
                if failure.retry_seconds is not None:
                    wait = failure.retry_seconds
                else:
                    wait = backoff_wait(failures, member.rng)
                    failures += 1

    def _lost(self, member: Member, client: WsClient) -> float:
        """Count a lost connection; the wait before its first reconnect."""
        code = str(client.close_code or 1006)
        member.closes += 1
        if member.role == "mover" and member.closes == 1:
            self.b_closes[code] += 1
            self.b_reasons.setdefault(code, client.close_reason)
            self.b_close_times.append(time.monotonic())
        else:
            self.later_closes[f"{member.role} {code}"] += 1
        return shutdown_wait(client.close_reason, member.rng)

    async def _resume(self, member: Member) -> Failure | None:
        """One reconnect to A with ``?after=``; None once its replay is in."""
        self.attempts[member.role] += 1
        member.link = new_link(self.loop)
        path = f"{self.path}?after={member.highest}"
        failure = await self._open(member, INSTANCE_A, path, WELCOME_SECONDS)
        if failure is not None:
            return failure
        link = member.link
        assert link.client is not None
        await first_of(link.replay, link.client.done)
        if not link.replay.done():
            return self._closed_early(link)
        if member.role == "mover" and member.resumed_at is None:
            member.resumed_at = link.replay.result()
            self.resumed += 1
            if self.resumed == len(self.movers):
                self.all_resumed.set()
        return None

    async def _watch(
        self,
        give_up: float,
        after: float,
        pids: list[int],
        redis_pid: int | None,
        db_pid: int | None,
    ) -> None:
        """End the storm: every mover resumed (or the give-up), then ``after``."""
        limit = self.sigterm_planned + give_up - time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(limit, 0)):
                await self.all_resumed.wait()
        ended = time.monotonic()
        if self.all_resumed.is_set():
            resumed = (m.resumed_at for m in self.movers if m.resumed_at is not None)
            ended = max(resumed, default=self.sigterm_planned)
        self.window_end = max(ended, self.sigterm_planned) + after
        await asyncio.sleep(max(0.0, self.window_end - time.monotonic()))
        probes.sample_cpu(self.cpu, "t1", pids, redis_pid, db_pid)
        if self.publishing is not None:
            self.publishing.cancel()

    # --- the end ------------------------------------------------------------------

    async def finish(
        self, *, sigterm_at: float, drain_seconds: float
    ) -> dict[str, Any]:
        """Wait for the storm's end and the last messages; what happened."""
        assert self.watcher is not None
        assert self.publisher is not None
        await self.watcher
        if self.publishing is not None:
            await asyncio.gather(self.publishing, return_exceptions=True)
        await self.publisher.settle(ACK_WAIT_SECONDS)
        first, last = self._expected_range()
        if last is not None:
            await self._drain(last, drain_seconds)
        if self.lag_probe is not None:
            self.lag_probe.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        result = self._results(sigterm_at, first, last)
        await self._close_all()
        return result

    def _expected_range(self) -> tuple[int | None, int | None]:
        """First and last seq everyone must hold: the publisher's, gap-free."""
        assert self.publisher is not None
        acked = self.publisher.acks.values()
        if not acked:
            return None, None
        seen = max((m.highest for m in self.members), default=0)
        return min(acked), max(max(acked), seen)

    async def _drain(self, last: int, limit: float) -> None:
        """Wait up to ``limit`` s until every open member has seq ``last``."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            behind = [
                m
                for m in self.members
                if m.highest < last and m.link.client and m.link.client.is_open
            ]
            if not behind:
                return
            await asyncio.sleep(POLL_SECONDS)

    def _results(
        self, sigterm_at: float, first: int | None, last: int | None
    ) -> dict[str, Any]:
        assert self.publisher is not None
        # Resumes after the give-up do not count (they still happen: the
        # movers keep trying until the end).
        resumed = sorted(
            round(m.resumed_at - sigterm_at, 3)
            for m in self.movers
            if m.resumed_at is not None
            and m.resumed_at - sigterm_at <= self.give_up_seconds
        )
        closes = [t - sigterm_at for t in self.b_close_times]
        window, before, by_second = _split(
            self.stayer_latencies, sigterm_at, self.window_end
        )
        acks, _, _ = _split(self.publisher.ack_latencies, sigterm_at, self.window_end)
        lags, _, lags_by_second = _split(
            self.generator_lags, sigterm_at, self.window_end
        )
        return {
            "stayers": len(self.members) - len(self.movers),
            "movers": len(self.movers),
            "published": self.publisher.sent,
            "acked": len(self.publisher.acks),
            "first_seq": first,
            "last_seq": last,
            "resumed": len(resumed),
            "resumed_offsets": resumed,
            "all_resumed_seconds": (
                resumed[-1] if resumed and len(resumed) == len(self.movers) else None
            ),
            "window_seconds": round(self.window_end - sigterm_at, 2),
            "unacked": len(self.publisher.pending),
            **self._losses(first, last),
            "attempts": self.attempts["mover"],
            "stayer_reconnects": self.attempts["stayer"],
            "refusals": dict(self.refusals),
            "refusal_hints": latency_summary(self.hints),
            "refusals_without_hint": dict(self.unhinted),
            "failures": dict(self.failures),
            "b_close_codes": dict(self.b_closes),
            "b_close_reasons": self.b_reasons,
            "b_closed_first_s": round(min(closes), 3) if closes else None,
            "b_closed_last_s": round(max(closes), 3) if closes else None,
            "later_closes": dict(self.later_closes),
            "latency": latency_summary(window),
            "latency_before": latency_summary(before),
            "latency_buckets": _buckets(by_second),
            "generator_max_lag_ms": _ms(max(lags, default=0.0)),
            "generator_lag_buckets": [
                [second, _ms(max(values))]
                for second, values in sorted(lags_by_second.items())
            ],
            "ack_latency": latency_summary(acks, prefix="ack_"),
            "max_send_lag_ms": round(self.publisher.worst_lag * 1e3, 1),
            "errors": dict(self.errors + self.publisher.errors),
            "cpu": self.cpu,
        }

    def _losses(self, first: int | None, last: int | None) -> dict[str, int]:
        """Seqs ``first..last`` missing, and duplicates, by role."""
        lost: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        for member in self.members:
            missing = _missing(member, first, last)
            lost[member.role] += missing
            duplicates[member.role] += member.duplicates
            if member.role == "mover" and member.resumed_at is None:
                lost["unresumed mover"] += missing
        return {
            "lost_stayers": lost["stayer"],
            "lost_movers": lost["mover"],
            "lost_unresumed_movers": lost["unresumed mover"],
            "duplicates_stayers": duplicates["stayer"],
            "duplicates_movers": duplicates["mover"],
        }

    async def _close_all(self) -> None:
        """Close every storm connection; abort those that linger."""
        assert self.publisher is not None
        clients = [m.link.client for m in self.members if m.link.client is not None]
        if self.publisher.client is not None:
            clients.append(self.publisher.client)
        for client in clients:
            client.close()
        pending = [c.done for c in clients if not c.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_WAIT_SECONDS)
        for client in clients:
            if not client.done.done():
                client.abort()


def _split(
    pairs: array, sigterm_at: float, window_end: float
) -> tuple[list[float], list[float], dict[int, list[float]]]:
    """(send time, latency) pairs: in the storm window, before SIGTERM, and
    per whole second of send time from SIGTERM."""
    window: list[float] = []
    before: list[float] = []
    by_second: dict[int, list[float]] = {}
    for i in range(0, len(pairs), 2):
        sent, latency = pairs[i], pairs[i + 1]
        if sent < sigterm_at:
            before.append(latency)
        elif sent < window_end:
            window.append(latency)
        by_second.setdefault(math.floor(sent - sigterm_at), []).append(latency)
    return window, before, by_second


def _buckets(by_second: dict[int, list[float]]) -> list[list[float | int | None]]:
    """``[second from SIGTERM, count, p50 ms, p99 ms]`` per second."""
    buckets: list[list[float | int | None]] = []
    for second in sorted(by_second):
        values = sorted(by_second[second])
        buckets.append(
            [second, len(values), _ms(percentile(values, 0.5)),
             _ms(percentile(values, 0.99))]
        )  # fmt: skip
    return buckets


def _missing(member: Member, first: int | None, last: int | None) -> int:
    """Seqs of ``first..last`` that the member never received."""
    if first is None or last is None:
        return 0
    held = sum(1 for seq in member.seen if first <= seq <= last)
    return last - first + 1 - held


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 1)
