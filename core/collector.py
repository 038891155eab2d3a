"""Full garbage collections wait out a surge of handshakes.

Python runs a full collection each time its long-lived objects have grown
by a quarter since the last one, and that pauses the whole process: 250 ms
with 2,500 connections here (docs/performance.md, "Garbage-collector
pauses"). A reconnect storm grows an instance from 500 connections to 2,500
in seconds: seven full collections while it happens, each stalling every
open connection just when they are busiest (the stayers' p99 in the storm
scenario: 184-294 ms with them, 85-130 ms without).

So while a process has ``SURGE_HANDSHAKES`` or more handshakes in progress,
full collections wait: young objects are still collected as usual (the
first two generations), only the oldest generation's threshold is raised.
Once no surge has been seen for ``QUIET_SECONDS``, or after
``MAX_DEFER_SECONDS`` in any case, the thresholds are restored, and Python
collects fully at its next chance: one pause after the storm instead of
several during it. After a deferral that ran its full length, the next one
waits for a full collection, so a surge that never ends still collects.

Garbage in the oldest generation waits for a full collection, and a full
collection walks every object there, live or not. A closed connection under
Daphne is freed as it closes (its cycles are cut: core/output.py,
core/servers/daphne.py), but other code may leave cycles (uvicorn's HTTP
protocol does, 8 objects per connection). So once the connections closed
since the last full collection outnumber those open (and at least
``GARBAGE_CONNECTIONS`` closed), the process collects within
``COLLECT_AFTER_CLOSES_SECONDS``, or once a surge is over: at a moment when
few are connected to feel it, and before the garbage can add to the next
surge's pause.

Every full collection's pause is a metric, and one past ``LONG_PAUSE_SECONDS``
is logged: a latency spike that matches one is the collector's.
"""

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

from core import metrics

logger = logging.getLogger(__name__)

# Low: a storm's first handshakes are when Python would collect the garbage
# of connections closed long before (416 ms for 170,000 objects, measured).
SURGE_HANDSHAKES = 3
QUIET_SECONDS = 3.0
MAX_DEFER_SECONDS = 20.0
# The oldest generation's threshold while deferring: never reached.
DEFERRED_THRESHOLD = 2**30
LONG_PAUSE_SECONDS = 0.1
GARBAGE_CONNECTIONS = 500
COLLECT_AFTER_CLOSES_SECONDS = 0.5


class Collector:
    """Defers full collections during surges, and puts them back after."""

    def __init__(self) -> None:
        self.saved: tuple[int, int, int] | None = None  # thresholds to restore
        self.deferred_at = 0.0
        self.surge_seen = 0.0
        # False from a deferral cut short at MAX_DEFER_SECONDS until a full
        # collection has run.
        self.may_defer = True
        self.full_started: float | None = None
        self.closed_since_full = 0
        self.collect_planned = False
        # The loop that handshakes run on (the first to ask for this).
        self.loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self.loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_collection)

    @property
    def deferring(self) -> bool:
        return self.saved is not None

    def handshakes_in_progress(self, count: int) -> None:
        """Told by admission control whenever a handshake starts."""
        if count < SURGE_HANDSHAKES:
            return
        now = time.monotonic()
        self.surge_seen = now
        if self.saved is not None or not self.may_defer or not gc.isenabled():
            return
        young, middle, _ = self.saved = gc.get_threshold()
        gc.set_threshold(young, middle, DEFERRED_THRESHOLD)
        self.deferred_at = now
        asyncio.get_running_loop().call_later(QUIET_SECONDS, self._check)

    def connection_closed(self, still_open: int) -> None:
        """Told by each connection as it goes, with how many are left."""
        self.closed_since_full += 1
        if (
            self.collect_planned
            or self.closed_since_full < max(GARBAGE_CONNECTIONS, still_open)
            or not gc.isenabled()
        ):
            return
        self.collect_planned = True
        asyncio.get_running_loop().call_later(
            COLLECT_AFTER_CLOSES_SECONDS, self._collect_garbage
        )

    def _collect_garbage(self) -> None:
        if self.closed_since_full < GARBAGE_CONNECTIONS:
            self.collect_planned = False
            return  # Python collected meanwhile
        if self.deferring:
            # A surge is on: collect once it is over, or the garbage waits
            # for Python's next full pass, which the next surge sets off
            # (a bench run carried 2,500 closed connections' objects, 190,000,
            # from one scenario into the reconnect storm that way).
            asyncio.get_running_loop().call_later(QUIET_SECONDS, self._collect_garbage)
            return
        self.collect_planned = False
        gc.collect()

    def _check(self) -> None:
        if self.saved is None:
            return
        now = time.monotonic()
        quiet = now - self.surge_seen >= QUIET_SECONDS
        if quiet:
            self.restore()
            return
        if now - self.deferred_at >= MAX_DEFER_SECONDS:
            self.restore()
            self.may_defer = False  # a surge that lasts still collects
            return
        wait = min(
            self.surge_seen + QUIET_SECONDS, self.deferred_at + MAX_DEFER_SECONDS
        )
        asyncio.get_running_loop().call_later(max(wait - now, 0.05), self._check)

    def restore(self) -> None:
        """Python's own thresholds again."""
        if self.saved is None:
            return
        gc.set_threshold(*self.saved)
        self.saved = None

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self.full_started = time.perf_counter()
            return
        self.may_defer = True
        self.closed_since_full = 0
        if self.full_started is None:
            return
        seconds = time.perf_counter() - self.full_started
        self.full_started = None
        metrics.gc_full_collection_seconds.observe(seconds)
        if seconds > LONG_PAUSE_SECONDS and self.loop is not None:
            # Logged from the loop: a collection may interrupt any code,
            # a log handler's own write among it.
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self.loop.call_soon_threadsafe(
                    self._log_pause, seconds, info["collected"]
                )

    @staticmethod
    def _log_pause(seconds: float, collected: int) -> None:
        logger.info(
            "a full garbage collection paused the process for %.0f ms "
            "(%d objects freed)",
            seconds * 1000,
            collected,
        )

    def close(self) -> None:
        self.restore()
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)


_collector: Collector | None = None


def get_collector() -> Collector:
    global _collector
    if _collector is None:
        _collector = Collector()
    return _collector


def reset_for_tests() -> None:
    global _collector
    if _collector is not None:
        _collector.close()
    _collector = None
