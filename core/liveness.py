"""Event-loop liveness: a heartbeat on the server's loop, answered at /livez.

Daphne runs every connection of a process on one asyncio event loop, HTTP
included. Code that blocks the loop (a synchronous call on an async path, a
runaway computation) freezes every socket of the instance, and the readiness
check cannot tell: ``/healthz`` does no I/O and is answered in whatever gaps
the loop leaves. So a task on the loop wakes every
``HEARTBEAT_INTERVAL_SECONDS`` and records how much later than due it woke,
its lag. ``/livez`` answers 503, naming the lag, when the loop has been late
by more than ``LIVENESS_STALL_SECONDS`` within the last such span, and 200
otherwise; App Platform's liveness check restarts an instance that keeps
failing it (docs/deploy.md). A loop blocked outright cannot answer at all:
the platform's probe times out, which fails the check too; the heartbeat
covers the loop that is stalled most of the time but answers between stalls.

The heartbeat starts with the first HTTP request its loop serves (the
platform's first probe), one per loop, like core.fanout's hub.
"""

import asyncio
import json
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from core import metrics

logger = logging.getLogger(__name__)

LIVENESS_PATH = "/livez"
# Often enough that a stall shows within half a second of its end, rarely
# enough to cost nothing (one timer per interval).
HEARTBEAT_INTERVAL_SECONDS = 0.5

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Liveness:
    """What ``/livez`` says: alive unless the recent lag passed the bound."""

    alive: bool
    # How late the loop is running now: the last beat's lag, or the wait
    # for the next beat if that is longer already.
    lag_seconds: float
    # The worst lag within the last ``bound_seconds``; what decides.
    worst_lag_seconds: float
    bound_seconds: float

    def as_json(self) -> dict[str, object]:
        return {
            "status": "ok" if self.alive else "stalled",
            "lag_seconds": round(self.lag_seconds, 3),
            "worst_lag_seconds": round(self.worst_lag_seconds, 3),
            "stall_bound_seconds": self.bound_seconds,
        }


class Heartbeat:
    """When one loop's heartbeat last ran, and how late its recent beats were.

    Times are ``time.monotonic()`` seconds, passed in, so the bookkeeping is
    tested without a loop.
    """

    def __init__(
        self,
        now: float,
        *,
        bound_seconds: float,
        interval_seconds: float = HEARTBEAT_INTERVAL_SECONDS,
    ) -> None:
        self.bound_seconds = bound_seconds
        self.interval_seconds = interval_seconds
        self.last_beat = now
        self.last_lag = 0.0
        # (when, lag) of the beats within the last bound_seconds.
        self.recent: deque[tuple[float, float]] = deque()
        self.task: asyncio.Task[None] | None = None

    def beat(self, now: float) -> float:
        """Record a beat at ``now``; return how much later than due it came."""
        lag = max(0.0, now - self.last_beat - self.interval_seconds)
        self.last_beat = now
        self.last_lag = lag
        self.recent.append((now, lag))
        while self.recent[0][0] < now - self.bound_seconds:
            self.recent.popleft()
        return lag

    def overdue(self, now: float) -> float:
        """How much later than due the next beat already is."""
        return max(0.0, now - self.last_beat - self.interval_seconds)

    def lag(self, now: float) -> float:
        """How late the loop is running: the last beat's lag, or the wait
        for the next one if that is longer."""
        return max(self.last_lag, self.overdue(now))

    def check(self, now: float) -> Liveness:
        """Alive unless a beat within the bound came later than the bound,
        or the next one is already that late."""
        horizon = now - self.bound_seconds
        worst = max(
            [self.overdue(now), *(lag for at, lag in self.recent if at >= horizon)]
        )
        return Liveness(
            alive=worst <= self.bound_seconds,
            lag_seconds=self.lag(now),
            worst_lag_seconds=worst,
            bound_seconds=self.bound_seconds,
        )

    async def run(self) -> None:
        """Beat every interval until cancelled; log stalls past the bound."""
        while True:
            await asyncio.sleep(self.interval_seconds)
            lag = self.beat(time.monotonic())
            if lag > self.bound_seconds:
                logger.warning(
                    "event loop stalled for %.1f s (liveness bound %g s): "
                    "/livez answers 503 for the next %g s",
                    lag,
                    self.bound_seconds,
                    self.bound_seconds,
                )


_heartbeats: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeat]" = (
    weakref.WeakKeyDictionary()
)


def get_heartbeat() -> Heartbeat:
    """The running loop's heartbeat, started on first use."""
    loop = asyncio.get_running_loop()
    heartbeat = _heartbeats.get(loop)
    if heartbeat is None:
        heartbeat = _heartbeats[loop] = Heartbeat(
            time.monotonic(), bound_seconds=settings.LIVENESS_STALL_SECONDS
        )
        heartbeat.task = loop.create_task(heartbeat.run(), name="liveness-heartbeat")
        # The task refers to its loop: forget the entry once it ends (the
        # loop closing cancels it), or the weak key would never go.
        heartbeat.task.add_done_callback(lambda _: _heartbeats.pop(loop, None))
    return heartbeat


def latest_lag_seconds() -> float:
    """How late this process's event loop is running, in seconds.

    The last heartbeat's lag, or the wait for the next beat if that is
    longer; 0.0 before the first request started the heartbeat. Callable
    from any thread (a metrics exporter): it only reads two numbers.
    """
    now = time.monotonic()
    return max((beat.lag(now) for beat in list(_heartbeats.values())), default=0.0)


metrics.reading(
    "switchboard_event_loop_lag_seconds",
    "How late this process's event loop runs: the last heartbeat's lag, or "
    "the wait for the next one if longer (/livez fails past its bound).",
)(latest_lag_seconds)


class LivenessMiddleware:
    """Outermost for HTTP: starts the loop's heartbeat and answers ``/livez``.

    Ahead of admission control, host validation and the HTTPS redirect, as
    ``/healthz`` is: the platform probes over plain HTTP with a Host of its
    own, and a busy but healthy instance must not wait for a turn to show
    that it is alive.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        heartbeat = get_heartbeat()
        if scope["type"] == "http" and scope["path"].rstrip("/") == LIVENESS_PATH:
            await _answer(send, heartbeat.check(time.monotonic()))
            return
        await self.app(scope, receive, send)


async def _answer(send: Send, liveness: Liveness) -> None:
    body = json.dumps(liveness.as_json()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200 if liveness.alive else 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
