"""``/livez`` on a real Daphne process: it fails when the event loop is
stalled longer than the bound, recovers after, and passes under heavy but
healthy load.

The stalls are made by a test-only wrapper of the application
(tests/support/stalls.py) that blocks the loop with ``time.sleep``, as a
synchronous call on an async path would. A ``Prober`` thread probes as App
Platform's liveness check does, giving up after a timeout; a blocked loop
answers nothing (the probe times out), and a probe that waits gets its
answer as soon as the loop runs again: 503, naming the lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from core.liveness import HEARTBEAT_INTERVAL_SECONDS, LIVENESS_PATH
from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import HTTP_ERRORS, create_room, http_json
from harness.waiting import async_wait_until, wait_until
from harness.ws import Clients
from tests.integration.common import report, unique_slug
from tests.support.stalls import BLOCK_LOOP_PATH

pytestmark = pytest.mark.integration

USERS = 4
BOUND_SECONDS = 2.0
LIVENESS_ENV = {"SWITCHBOARD_LIVENESS_STALL_SECONDS": str(BOUND_SECONDS)}
STALLS_APPLICATION = "tests.support.stalls:application"
# Probes as the platform's, only more often and with a shorter patience.
PROBE_EVERY_SECONDS = 0.2
PROBE_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class Probe:
    """One GET; ``status`` None means no answer within the timeout."""

    sent_at: float
    answered_at: float | None
    status: int | None
    body: Any

    @property
    def failed(self) -> bool:
        return self.status != 200


def probe(app: AppProcess, path: str = LIVENESS_PATH, timeout: float = 1.0) -> Probe:
    sent_at = time.monotonic()
    try:
        status, body = http_json(app, "GET", path, timeout=timeout)
    except HTTP_ERRORS:  # TimeoutError is an OSError
        return Probe(sent_at, None, None, None)
    return Probe(sent_at, time.monotonic(), status, body)


class Prober:
    """Probes ``app`` in a thread until the ``with`` block ends."""

    def __init__(
        self,
        app: AppProcess,
        *,
        every: float = PROBE_EVERY_SECONDS,
        timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        self.app = app
        self.every = every
        self.timeout = timeout
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            result = probe(self.app, timeout=self.timeout)
            self.probes.append(result)
            self._stop.wait(max(0.0, self.every - (time.monotonic() - result.sent_at)))

    def first(self, predicate: Any, timeout: float, what: str) -> Probe:
        """Wait for the first probe that satisfies ``predicate``."""

        def found() -> Probe | None:
            return next((p for p in list(self.probes) if predicate(p)), None)

        return wait_until(found, timeout, message=what)


def block_loop(
    app: AppProcess, seconds: float, times: int = 1, gap: float = 0
) -> float:
    """Have ``app`` block its loop; return about when blocking starts."""
    query = f"seconds={seconds}&times={times}&gap={gap}"
    status, _ = http_json(app, "POST", f"{BLOCK_LOOP_PATH}?{query}")
    assert status == 202
    return time.monotonic()


def stalling_instance(launcher: Launcher) -> AppProcess:
    """One instance of the stalls wrapper, with the test's bound."""
    (app,) = launcher.launch_each(
        {"stalling": LIVENESS_ENV}, application=STALLS_APPLICATION
    )
    first = probe(app)
    assert first.status == 200, first
    assert first.body["stall_bound_seconds"] == BOUND_SECONDS
    return app


def test_livez_fails_while_the_loop_is_blocked_and_recovers(
    launcher: Launcher,
) -> None:
    """Blocked 5 s with a bound of 2 s: probes time out, the first answer
    after the block is 503 naming the lag, and 200 comes back within the
    bound (plus a heartbeat) after the loop runs again."""
    app = stalling_instance(launcher)
    block_seconds = 5.0
    with Prober(app) as prober:
        asked_at = block_loop(app, block_seconds)
        # A probe timing out is how the client side knows the loop is blocked.
        first_failure = prober.first(
            lambda p: p.sent_at >= asked_at and p.failed, 10, "a failed probe"
        )
        # A probe that waits is answered once the loop runs again.
        patient = probe(app, timeout=block_seconds + 10)
        recovered = prober.first(
            lambda p: (
                patient.answered_at is not None
                and p.sent_at >= patient.answered_at
                and p.status == 200
            ),
            BOUND_SECONDS + 10,
            "/livez 200 again",
        )
    during = [
        p
        for p in prober.probes
        if first_failure.sent_at <= p.sent_at < recovered.sent_at
    ]

    assert patient.status == 503, patient
    assert patient.body["status"] == "stalled"
    assert patient.body["worst_lag_seconds"] > BOUND_SECONDS
    assert all(p.failed for p in during)
    assert patient.answered_at is not None
    recovery = recovered.answered_at - patient.answered_at
    assert recovery <= BOUND_SECONDS + 4 * HEARTBEAT_INTERVAL_SECONDS
    report(
        "livez after a 5 s block (bound 2 s)",
        {
            "first_failed_probe_sent_after_s": round(
                first_failure.sent_at - asked_at, 2
            ),
            "answered_503_with_lag_s": patient.body["worst_lag_seconds"],
            "200_again_after_the_loop_ran_s": round(recovery, 2),
            "failed_probes": Counter(str(p.status) for p in during),
        },
    )


def test_livez_fails_between_stalls_that_healthz_survives(
    launcher: Launcher,
) -> None:
    """Stalled most of the time (3 s blocks, 0.3 s gaps): every probe the
    loop answers in a gap is 503, while /healthz, answered in the same
    gaps, stays 200: the readiness check cannot see it."""
    app = stalling_instance(launcher)
    blocks, block_seconds, gap_seconds = 4, 3.0, 0.3
    with Prober(app) as prober:
        asked_at = block_loop(app, block_seconds, times=blocks, gap=gap_seconds)
        prober.first(lambda p: p.sent_at >= asked_at and p.failed, 10, "a failure")
        healthz = probe(app, "/healthz", timeout=block_seconds + 10)
        ends_at = asked_at + blocks * block_seconds + (blocks - 1) * gap_seconds
        prober.first(
            lambda p: p.sent_at > ends_at and p.status == 200,
            ends_at - time.monotonic() + BOUND_SECONDS + 10,
            "/livez 200 after the last stall",
        )
    # Answered while the stalls went on (a margin either side for timing).
    answered = [
        p
        for p in prober.probes
        if p.answered_at is not None and asked_at + 0.2 < p.answered_at < ends_at
    ]

    assert healthz.status == 200, healthz
    assert answered, "no probe was answered in a gap between stalls"
    assert [p.status for p in answered] == [503] * len(answered)
    report(
        "livez while stalled most of the time (4 x 3 s, 0.3 s gaps, bound 2 s)",
        {
            "probes": len(prober.probes),
            "answered_in_gaps": len(answered),
            "worst_lag_s": max(p.body["worst_lag_seconds"] for p in answered),
            "healthz_in_a_gap": healthz.status,
        },
    )


# --- heavy but healthy load ------------------------------------------------

READERS = 200
PUBLISHERS = 4
MESSAGES_EACH = 150
HTTP_THREADS = 24  # more than SWITCHBOARD_HTTP_CONCURRENCY's 16: some queue


class Reader:
    """An anonymous follower of a room that keeps the seqs it receives."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.greeted = asyncio.Event()
        self.reading: asyncio.Task[None] | None = None

    async def open(self, app: AppProcess, slug: str) -> None:
        ws = await websockets.connect(
            app.ws_url(f"/ws/rooms/{slug}/"), proxy=None, open_timeout=10
        )
        self.reading = asyncio.get_running_loop().create_task(self._read(ws))
        await asyncio.wait_for(self.greeted.wait(), 10)

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "message":
                    self.seqs.append(frame["seq"])
                elif frame["type"] == "presence":
                    self.greeted.set()
        except ConnectionClosed:
            pass
        finally:
            await ws.close()

    async def close(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reading


def hammer(app: AppProcess, path: str, token: str, stop: threading.Event) -> Counter:
    """GET ``path`` back to back until ``stop``; count the statuses."""
    statuses: Counter = Counter()
    while not stop.is_set():
        try:
            status, _ = http_json(app, "GET", path, token=token, timeout=10)
        except HTTP_ERRORS:
            status = "no answer"
        statuses[status] += 1
    return statuses


async def test_livez_stays_200_under_heavy_healthy_load(
    launcher: Launcher, deployment: Deployment, clients: Clients
) -> None:
    """200 readers of a room four publishers flood, and 24 threads of API
    reads at once (past the HTTP queue's 16): every probe is 200, and the
    worst lag seen stays far below the bound."""
    (app,) = launcher.launch_each(
        {
            "loaded": {
                **LIVENESS_ENV,
                # The publishers post faster than a person may.
                "SWITCHBOARD_SEND_BURST": "1000",
                "SWITCHBOARD_SEND_RATE_PER_SECOND": "1000",
            }
        }
    )
    tokens = deployment.fetch_tokens(app)
    names = deployment.usernames[:PUBLISHERS]
    slug = unique_slug("liveness")
    create_room(app, tokens[names[0]], slug)
    readers = [Reader() for _ in range(READERS)]
    opening = asyncio.Semaphore(32)

    async def open_reader(reader: Reader) -> None:
        async with opening:
            await reader.open(app, slug)

    await asyncio.gather(*(open_reader(reader) for reader in readers))
    publishers = [
        await clients.open(app, slug, token=tokens[name], name=name) for name in names
    ]
    stop = threading.Event()
    api_path = f"/api/rooms/{slug}/messages/?limit=50"
    try:
        with (
            Prober(app, timeout=2.0) as prober,
            ThreadPoolExecutor(max_workers=HTTP_THREADS) as pool,
        ):
            readers_of_api = [
                pool.submit(hammer, app, api_path, tokens[names[n % PUBLISHERS]], stop)
                for n in range(HTTP_THREADS)
            ]
            started = time.monotonic()
            await asyncio.gather(
                *(
                    publisher.publish(
                        [f"load {publisher.name} {n}" for n in range(MESSAGES_EACH)],
                        window=20,
                        timeout=120,
                    )
                    for publisher in publishers
                )
            )
            total = PUBLISHERS * MESSAGES_EACH
            await async_wait_until(
                lambda: all(len(reader.seqs) >= total for reader in readers),
                60,
                message="every reader has every message",
            )
            elapsed = time.monotonic() - started
            stop.set()
            api_statuses = sum((f.result() for f in readers_of_api), Counter())
    finally:
        stop.set()
        await asyncio.gather(*(reader.close() for reader in readers))

    probes = [p for p in prober.probes if p.sent_at >= started]
    worst = max(p.body["worst_lag_seconds"] for p in probes if p.body)
    latencies = sorted(p.answered_at - p.sent_at for p in probes if p.answered_at)

    assert len(probes) >= 10
    assert [p.status for p in probes] == [200] * len(probes)
    assert worst < BOUND_SECONDS / 4
    assert all(
        sorted(set(reader.seqs)) == list(range(1, total + 1)) for reader in readers
    )
    report(
        "livez under load (bound 2 s)",
        {
            "seconds": round(elapsed, 1),
            "deliveries_per_s": round(READERS * total / elapsed),
            "api_requests": dict(api_statuses),
            "probes": len(probes),
            "probe_latency_max_ms": round(latencies[-1] * 1000),
            "worst_lag_s": worst,
        },
    )
