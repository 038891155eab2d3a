"""Log lines that a client can cause, without letting one flood the logs.

A refused Origin, a bad ``Authorization`` header or a throttled sign-in is
worth a line, but a client can cause one per request. ``limited(...)`` logs
at most ``LOG_LIMIT_LINES`` lines per key every ``LOG_LIMIT_INTERVAL_SECONDS``
and counts the rest: the first line held back says that suppression began,
and the next line of that key after the interval is preceded by one
"suppressed K similar lines" summary. Keys name a call site, never a value a
client chose (an Origin, a username), so their number stays fixed.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

# Keys are call sites, a handful; the cap only guards against a caller that
# builds keys from input by mistake.
MAX_KEYS = 1024


@dataclass
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0


class LogLimiter:
    """At most ``lines`` log lines per key every ``interval_seconds``."""

    def __init__(
        self,
        lines: int,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines = lines
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        # Sync views log from worker threads, consumers from the event loop.
        self._lock = threading.Lock()

    def log(
        self, logger: logging.Logger, level: int, key: str, msg: str, *args: object
    ) -> bool:
        """Log ``msg % args`` unless ``key`` used up its lines; True if logged."""
        with self._lock:
            now = self.clock()
            window = self._windows.get(key)
            summary = 0
            if window is None or now - window.started >= self.interval_seconds:
                summary = window.suppressed if window is not None else 0
                window = self._new_window(key, now)
            emit = window.logged < self.lines
            if emit:
                window.logged += 1
            else:
                window.suppressed += 1
            notice = window.suppressed == 1 and not emit
        if summary:
            logger.log(
                level,
                "%s: suppressed %d similar lines (at most %d per %g s)",
                key,
                summary,
                self.lines,
                self.interval_seconds,
            )
        if notice:
            # Said once, so a reader knows lines are missing even if the
            # flood stops before the summary's turn comes.
            logger.log(
                level,
                "%s: over %d lines in %g s; suppressing similar lines",
                key,
                self.lines,
                self.interval_seconds,
            )
        if emit:
            logger.log(level, msg, *args)
        return emit

    def _new_window(self, key: str, now: float) -> _Window:
        if key not in self._windows and len(self._windows) >= MAX_KEYS:
            self._windows.clear()
        window = self._windows[key] = _Window(started=now)
        return window


_limiter: LogLimiter | None = None
_limiter_lock = threading.Lock()


def _default_limiter() -> LogLimiter:
    global _limiter
    with _limiter_lock:
        if _limiter is None:
            _limiter = LogLimiter(
                settings.LOG_LIMIT_LINES, settings.LOG_LIMIT_INTERVAL_SECONDS
            )
        return _limiter


def limited(
    logger: logging.Logger, level: int, key: str, msg: str, *args: object
) -> bool:
    """Log through the process's limiter (settings ``LOG_LIMIT_*``)."""
    return _default_limiter().log(logger, level, key, msg, *args)


def reset_for_tests() -> None:
    """Forget every key's count (and re-read the settings)."""
    global _limiter
    with _limiter_lock:
        _limiter = None
