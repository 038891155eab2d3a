"""Real Switchboard instances for the browser tier, and an HTTP API client.

A ``Deployment`` is one or more Daphne instances that share one database,
as App Platform runs them. With SQLite and no ``REDIS_URL`` each instance
has its own in-memory channel layer: a message posted through instance B
reaches a page on instance A only by A's page resuming (``?after=``) or
filling a gap (``history``), which is what some tests rely on. A variant
with Redis and PostgreSQL passes ``DATABASE_URL`` and ``REDIS_URL`` in
``env`` and gets live delivery across instances as well.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.process import AppProcess, manage

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
}

_CREATE_USERS = f"""
from django.contrib.auth import get_user_model
User = get_user_model()
for name in {USERS!r}:
    User.objects.create_user(name, password={PASSWORD!r})
"""


_ENSURE_STAFF = f"""
from django.contrib.auth import get_user_model
user, _ = get_user_model().objects.get_or_create(username={{name!r}})
user.is_staff = True
user.set_password({PASSWORD!r})
user.save()
"""


def prepare_database(database_url: str) -> None:
    """Migrate the database at ``database_url`` and create the test users."""
    env = {**BASE_ENV, "DATABASE_URL": database_url}
    manage("migrate", "--noinput", env=env)
    manage("shell", "-c", _CREATE_USERS, env=env)


def make_sqlite_template(directory: Path) -> Path:
    """A migrated SQLite database with the test users, to copy per deployment."""
    path = directory / "template.sqlite3"
    prepare_database(f"sqlite:///{path}")
    # Fold the write-ahead log into the file, so copying the file is enough.
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


class ApiError(AssertionError):
    """The HTTP API answered with an unexpected status."""


class Deployment:
    """``count`` instances of the project sharing one database."""

    def __init__(
        self, directory: Path, env: Mapping[str, str], count: int = 1, name: str = "app"
    ) -> None:
        self.directory = directory
        self.env = {**BASE_ENV, **env}
        self.instances = [
            AppProcess(
                self.env,
                name=f"{name}{index}",
                log_path=directory / f"{name}{index}.log",
            )
            for index in range(count)
        ]
        self._tokens: dict[str, str] = {}
        self.storage_states: dict[str, dict[str, Any]] = {}

    @classmethod
    def on_sqlite(
        cls,
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
        return cls(directory, env, count, name)

    def start(self) -> Deployment:
        """Start every instance in parallel; return once all answer /healthz."""
        for instance in self.instances:
            instance.start(wait=False)
        for instance in self.instances:
            instance.wait_ready()
        return self

    def close(self) -> None:
        for instance in self.instances:
            instance.close()

    def url(self, index: int = 0) -> str:
        """Base URL of instance ``index`` (wrapping, so 1 works with one)."""
        return self.instances[index % len(self.instances)].url

    def logs(self) -> str:
        """Every instance's log, for a failure report."""
        return "\n".join(
            f"----- {instance.name} ({instance.log_path}) -----\n{instance.log_text()}"
            for instance in self.instances
        )

    # --- HTTP API -------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        user: str | None = None,
        instance: int = 0,
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        """Call the JSON API on ``instance`` as ``user`` (by token)."""
        headers = {"Accept": "application/json"}
        if user is not None:
            headers["Authorization"] = f"Token {self.token(user, instance=instance)}"
        return _request(self.url(instance), method, path, body, headers, expect)

    def token(self, user: str, *, instance: int = 0) -> str:
        if user not in self._tokens:
            answer = _request(
                self.url(instance),
                "POST",
                "/api/auth/token/",
                {"username": user, "password": PASSWORD},
                {},
                (200,),
            )
            self._tokens[user] = answer["token"]
        return self._tokens[user]

    def create_room(
        self, slug: str, *, owner: str = "alice", name: str = "", private: bool = False
    ) -> str:
        self.api(
            "POST",
            "/api/rooms/",
            {"name": name or slug.replace("-", " ").title(), "slug": slug,
             "is_private": private},
            user=owner,
        )  # fmt: skip
        return slug

    def post(self, slug: str, body: str, *, user: str, instance: int = 0) -> int:
        """Post a message through the API; return its seq."""
        frame = self.api(
            "POST",
            f"/api/rooms/{slug}/messages/",
            {"body": body},
            user=user,
            instance=instance,
        )
        return int(frame["seq"])

    def edit(
        self, slug: str, seq: int, body: str, *, user: str, instance: int = 0
    ) -> dict[str, Any]:
        """Edit message ``seq`` through the API; return the edit event."""
        path = f"/api/rooms/{slug}/messages/{seq}/"
        return self.api("PATCH", path, {"body": body}, user=user, instance=instance)

    def delete(
        self, slug: str, seq: int, *, user: str, instance: int = 0
    ) -> dict[str, Any]:
        """Delete message ``seq`` through the API; return the delete event."""
        path = f"/api/rooms/{slug}/messages/{seq}/"
        return self.api("DELETE", path, user=user, instance=instance)

    def messages(self, slug: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The room's latest messages, as stored."""
        page = self.api("GET", f"/api/rooms/{slug}/messages/?limit={limit}")
        return page["messages"]

    def view(self, slug: str) -> list[list[object]]:
        """The room as the database has it, as a page shows it:
        ``[seq, text, state]`` per message, state "", "edited" or "deleted";
        edits and deletions are no rows of their own."""
        rows: list[list[object]] = []
        for message in self.messages(slug):
            if "kind" in message:
                continue
            if message.get("deleted"):
                rows.append([message["seq"], "message deleted", "deleted"])
            else:
                state = "edited" if "edited_at" in message else ""
                rows.append([message["seq"], message["body"], state])
        return rows

    def ensure_staff(self, username: str) -> None:
        """A staff user (not a superuser) with the tier's password."""
        manage("shell", "-c", _ENSURE_STAFF.format(name=username), env=self.env)


def _request(
    base_url: str,
    method: str,
    path: str,
    body: object,
    headers: dict[str, str],
    expect: tuple[int, ...],
) -> Any:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers = {**headers, "Content-Type": "application/json"}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    if response.status not in expect:
        raise ApiError(f"{method} {path} answered {response.status}: {text[:500]}")
    return json.loads(text) if text else None
