"""The browser tier's deployments: ``harness.deployment.Deployment`` set up
for pages.

A deployment is one or more Daphne instances that share one database, as App
Platform runs them. With SQLite and no ``REDIS_URL`` each instance has its
own in-memory channel layer: a message posted through instance B reaches a
page on instance A only by A's page resuming (``?after=``) or filling a gap
(``history``), which is what some tests rely on. A variant with Redis and
PostgreSQL passes ``DATABASE_URL`` and ``REDIS_URL`` in ``env`` and gets live
delivery across instances as well.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from harness.deployment import Deployment
from harness.deployment import prepare_database as prepare
from tests.support.server_settings import TEST_SERVER_SETTINGS

PASSWORD = "browser-test-password-7"
USERS = ("alice", "bob", "carol")

# Every instance of every deployment runs with these.
BASE_ENV = {
    "DJANGO_SECRET_KEY": "browser-tier-secret-key-not-for-production",
    # DEBUG lets WhiteNoise serve the static files from the app folders, so
    # no collectstatic (and no shared STATIC_ROOT) is needed.
    "DJANGO_DEBUG": "1",
    # The tests post through the API faster than a person would.
    "SWITCHBOARD_SEND_RATE_PER_SECOND": "1000",
    "SWITCHBOARD_SEND_BURST": "1000",
    "SWITCHBOARD_HISTORY_RATE_PER_SECOND": "100",
    "SWITCHBOARD_HISTORY_BURST": "100",
    # Every test makes its own room through the API, as one user: the
    # default (20, then one a minute) runs out a tier's worth of tests in.
    "SWITCHBOARD_ROOM_CREATE_RATE_PER_SECOND": "100",
    "SWITCHBOARD_ROOM_CREATE_BURST": "1000",
    "SWITCHBOARD_SEARCH_RATE_PER_SECOND": "100",
    "SWITCHBOARD_SEARCH_BURST": "1000",
    # The members panel looks names up as they are typed, as one user.
    "SWITCHBOARD_USERS_LOOKUP_RATE_PER_SECOND": "100",
    "SWITCHBOARD_USERS_LOOKUP_BURST": "1000",
    # Production's settings with a cheap password hasher, for ensure_user
    # and every sign-in (tests/support/server_settings.py).
    **TEST_SERVER_SETTINGS,
}


def prepare_database(database_url: str) -> None:
    """Migrate the database at ``database_url`` and create the test users."""
    env = {**BASE_ENV, "DATABASE_URL": database_url}
    prepare(env, usernames=USERS, password=PASSWORD)


def make_sqlite_template(directory: Path) -> Path:
    """A migrated SQLite database with the test users, to copy per deployment."""
    path = directory / "template.sqlite3"
    prepare_database(f"sqlite:///{path}")
    # Fold the write-ahead log into the file, so copying the file is enough.
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def shared_database(
    directory: Path, env: Mapping[str, str], count: int = 1, name: str = "app"
) -> Deployment:
    """``count`` instances (not started) on the database ``env`` names."""
    return Deployment(
        {**BASE_ENV, **env},
        usernames=USERS,
        password=PASSWORD,
        name=name,
        count=count,
        log_dir=directory,
    )


def on_sqlite(
    directory: Path,
    template: Path,
    count: int = 1,
    name: str = "app",
    env: Mapping[str, str] | None = None,
) -> Deployment:
    """Instances on a fresh copy of the migrated SQLite ``template``."""
    database = directory / "db.sqlite3"
    shutil.copyfile(template, database)
    env = {"DATABASE_URL": f"sqlite:///{database}", **(env or {})}
    return shared_database(directory, env, count, name)
