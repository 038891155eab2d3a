"""What the integration tier's tests share besides fixtures: the users'
password, names that keep tests apart, a ``make run`` environment and the
figures they print.  Clients and services come from ``harness``.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from harness.deployment import prepare_database
from harness.postgres import PostgresCluster
from harness.process import ServiceUnavailable
from harness.redis_server import RedisServer

# One password for every test user: hashing it is the slow part of sign-in.
PASSWORD = "integration-Password-1"
USERS_PER_MODULE = 12

# Environment for instances whose many test clients share one address.
LOOPBACK_CROWD = {
    "SWITCHBOARD_ANONYMOUS_CONNECTIONS_PER_ADDRESS": "100000",
    "SWITCHBOARD_HANDSHAKE_BURST_PER_ADDRESS": "100000",
}


def throwaway_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of its own, for a fixture to yield from."""
    try:
        cluster = PostgresCluster()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    with cluster:
        yield cluster


def throwaway_redis() -> Iterator[RedisServer]:
    """A redis-server with a password of its own, for a fixture to yield from."""
    try:
        server = RedisServer(password=secrets.token_hex(12))
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


def module_tag(request: pytest.FixtureRequest) -> str:
    """``test_cross_instance`` -> ``cross_instance``, safe for names."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return re.sub(r"[^a-z0-9_]", "_", name.lower())[:30]


def unique_slug(tag: str) -> str:
    """A room slug no other test uses."""
    return f"{tag[:40]}-{secrets.token_hex(3)}"


def provision_laptop(tmp_path: Path, usernames: list[str]) -> dict[str, str]:
    """The ``make run`` environment on a fresh SQLite file: migrated, with
    the lobby and ``usernames`` (in-memory layer, no Redis, DEBUG on).
    """
    env = {
        "DJANGO_DEBUG": "1",
        # Blank is unset: the fixed development key applies, as in make run.
        "DJANGO_SECRET_KEY": "",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    prepare_database(
        env, usernames=usernames, password=PASSWORD, rooms={"lobby": "Lobby"}
    )
    return env


def sqlite_snapshot(path: Path) -> Path:
    """Fold the write-ahead log of the SQLite database at ``path`` into the
    file, so that copying the file copies everything; return ``path``.

    A fixture prepares such a database once (migrated, users, rooms,
    messages) and each test serves a copy of its own (``sqlite_copy``).
    """
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def sqlite_copy(snapshot: Path, directory: Path) -> str:
    """A copy of ``snapshot`` in ``directory``; its ``DATABASE_URL``."""
    database = directory / "db.sqlite3"
    shutil.copyfile(snapshot, database)
    return f"sqlite:///{database}"


def report(title: str, figures: Mapping[str, object]) -> str:
    """Print figures for the record (``-s`` shows them) and return the text."""
    text = f"{title}: " + ", ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[figures] {text}", file=sys.stdout, flush=True)
    return text
