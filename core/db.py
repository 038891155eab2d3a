"""Where a process's database work runs.

Channels' ``database_sync_to_async`` runs every call of a process on one
thread, so one slow query or one wait for a pool connection would stall
every socket of the process. Here consumers' and background tasks' database
work (``run``) has ``DB_THREADS`` threads, and handshakes (``run_handshake``)
two of their own, so that a crowd of them never queues ahead of the sends of
connections already open. Each call borrows a pool connection and gives it
back (``close_old_connections`` before and after, as Channels does), and
``DB_STATEMENT_TIMEOUT_MS`` ends a statement that runs too long
(docs/deploy.md, "Database connections").

SQLite (a laptop) keeps Channels' one database thread: it serializes access
anyway, and readers on other threads would meet its table locks.
"""

import functools
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections
from django.db.models.signals import pre_migrate
from django.dispatch import receiver

from core import metrics

P = ParamSpec("P")
T = TypeVar("T")

HANDSHAKE_THREADS = 2

_threads = ThreadPoolExecutor(max_workers=settings.DB_THREADS, thread_name_prefix="db")
_handshake_threads = ThreadPoolExecutor(
    max_workers=HANDSHAKE_THREADS, thread_name_prefix="handshake"
)


class _Timed:
    """Times each call on its thread and counts the threads at work."""

    def __init__(self, executor: str) -> None:
        self.seconds = metrics.database_seconds.labels(executor)
        self.busy = 0
        self.lock = threading.Lock()

    def wrap(self, func: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(func)
        def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            with self.lock:
                self.busy += 1
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                metrics.observe_call(self.seconds, started)
                with self.lock:
                    self.busy -= 1

        return timed


_timed = {"db": _Timed("db"), "handshake": _Timed("handshake")}


def _on(
    executor: ThreadPoolExecutor, func: Callable[P, T], timed: _Timed
) -> Callable[P, Awaitable[T]]:
    func = timed.wrap(func)
    if "sqlite" in settings.DATABASES["default"]["ENGINE"]:
        return database_sync_to_async(func)
    return database_sync_to_async(func, thread_sensitive=False, executor=executor)


def run(func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """``func`` as a coroutine function, run on the database threads."""
    return _on(_threads, func, _timed["db"])


def run_handshake(func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """``func`` as a coroutine function, run on the handshake threads."""
    return _on(_handshake_threads, func, _timed["handshake"])


@metrics.reading(
    "switchboard_database_threads_busy",
    "Database threads of this process running a call (consumers, background "
    "tasks and handshakes; at most SWITCHBOARD_DB_THREADS + 2).",
)
def _threads_busy() -> float:
    return float(sum(timed.busy for timed in _timed.values()))


def _pool_stat(key: str) -> float | None:
    # Django keeps its psycopg pools on the backend's class; one per alias.
    pools = getattr(connections["default"], "_connection_pools", {})
    pool = pools.get("default")
    return None if pool is None else float(pool.get_stats().get(key, 0))


for _key, _doc in (
    ("pool_size", "PostgreSQL connections the pool holds, in use or idle."),
    ("pool_available", "Idle PostgreSQL connections in the pool."),
    ("requests_waiting", "Requests waiting for a pool connection."),
):
    metrics.reading(f"switchboard_database_{_key}", _doc)(
        functools.partial(_pool_stat, _key)
    )


@receiver(pre_migrate)
def lift_statement_timeout(using: str = "default", **kwargs: object) -> None:
    """Migrations may rewrite whole tables: no statement timeout for them."""
    connection = connections[using]
    if connection.vendor == "postgresql" and settings.DB_STATEMENT_TIMEOUT_MS:
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
