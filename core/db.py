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

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections
from django.db.models.signals import pre_migrate
from django.dispatch import receiver

P = ParamSpec("P")
T = TypeVar("T")

HANDSHAKE_THREADS = 2

_threads = ThreadPoolExecutor(max_workers=settings.DB_THREADS, thread_name_prefix="db")
_handshake_threads = ThreadPoolExecutor(
    max_workers=HANDSHAKE_THREADS, thread_name_prefix="handshake"
)


def _on(
    executor: ThreadPoolExecutor, func: Callable[P, T]
) -> Callable[P, Awaitable[T]]:
    if "sqlite" in settings.DATABASES["default"]["ENGINE"]:
        return database_sync_to_async(func)
    return database_sync_to_async(func, thread_sensitive=False, executor=executor)


def run(func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """``func`` as a coroutine function, run on the database threads."""
    return _on(_threads, func)


def run_handshake(func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """``func`` as a coroutine function, run on the handshake threads."""
    return _on(_handshake_threads, func)


@receiver(pre_migrate)
def lift_statement_timeout(using: str = "default", **kwargs: object) -> None:
    """Migrations may rewrite whole tables: no statement timeout for them."""
    connection = connections[using]
    if connection.vendor == "postgresql" and settings.DB_STATEMENT_TIMEOUT_MS:
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
