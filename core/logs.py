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
        # The key names the event in structured logs (core.logcontext).
        event = {"event": key}
        if summary:
            logger.log(
                level,
                "%s: suppressed %d similar lines (at most %d per %g s)",
                key,
                summary,
                self.lines,
                self.interval_seconds,
                extra=event,
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
                extra=event,
            )
        if emit:
            logger.log(level, msg, *args, extra=event)
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


def _is_connection_failure(exc: BaseException | None) -> bool:
    # redis-py's ConnectionError/TimeoutError are not OSError subclasses.
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, OSError | RedisConnectionError | RedisTimeoutError)


class RedisOutageLines(logging.Filter):
    """Turn channels_redis' per-retry ERROR tracebacks into limited WARNINGs.

    While Redis is unreachable, the pub/sub layer's receive task logs
    "Unexpected exception in receive task" with a traceback on every retry,
    once a second. An outage is expected and survived (docs/protocol.md,
    "Without Redis"), and core already says so once per outage; an ERROR
    per second would page an operator for a failover. Connection failures
    become one WARNING line each, without the traceback, through the
    process's limiter; any other exception stays an ERROR with its
    traceback, because that one is a bug.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or not _is_connection_failure(exc):
            return True
        limited(
            logging.getLogger(record.name),
            logging.WARNING,
            "channels_redis.connection_lost",
            "%s (Redis unreachable, the layer retries: %s: %s)",
            record.getMessage().rstrip(":"),
            type(exc).__name__,
            exc,
        )
        return False


class ServiceUnavailableLines(logging.Filter):
    """Log Django's line for a 503 as a WARNING, not an ERROR.

    Django logs every 5xx answer at ERROR. Switchboard's 503s are designed
    answers, each with its own reason logged where it is decided: /readyz
    naming a failing part, admission control or password hashing busy. A 500
    stays an ERROR.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) == 503:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
