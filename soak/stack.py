"""The processes under soak: Redis, PostgreSQL and two Daphne instances.

All three come from the project's harness (the ``harness`` package), as
they do for the integration tier and the bench: ``RedisServer``,
``PostgresCluster`` (migrated with ``manage.py migrate``) and ``AppProcess``
running exactly ``daphne backend.asgi:application``, as a ``Deployment``.
Users are made with ``manage.py ensure_user``; their tokens, the rooms and the
private room's members come through the HTTP API, as a user's would.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from harness.app import AppProcess
from harness.deployment import Deployment, prepare_database
from harness.http import http_json
from harness.postgres import PostgresCluster, connect_url
from harness.redis_server import RedisServer
from soak import config
from soak.checks import Stored

DATABASE = "switchboard_soak"
CHANNEL_PREFIX = "soak"


def username(number: int) -> str:
    return f"soak-u{number:02d}"


def room_slug(number: int) -> str:
    return f"soak-r{number:02d}"


# Hashed once per user by ensure_user and once per sign-in; nothing else.
PASSWORD = "soak-Password-1"  # noqa: S105 (throwaway users of a throwaway database)


class StackError(RuntimeError):
    """Provisioning or an API call the soak depends on failed."""


@dataclass
class Stack:
    """Redis, PostgreSQL, the instances, and who may sign in."""

    log_dir: Path
    redis: RedisServer | None = None
    postgres: PostgresCluster | None = None
    database_url: str = ""
    deployment: Deployment | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))

    @property
    def instances(self) -> list[AppProcess]:
        return self.deployment.instances if self.deployment else []

    @property
    def usernames(self) -> list[str]:
        return [username(n) for n in range(config.USERS)]

    @property
    def public_rooms(self) -> list[str]:
        return [room_slug(n) for n in range(config.ROOMS)]

    def env(self) -> dict[str, str]:
        """An instance's whole configuration (README, "Configuration")."""
        if self.redis is None:
            raise StackError("Redis is not running")
        return {
            "DJANGO_SECRET_KEY": self.secret_key,
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "SWITCHBOARD_CHANNEL_PREFIX": CHANNEL_PREFIX,
            # Every soak user signs in from 127.0.0.1 once, for its token;
            # the traffic itself never signs in.
            "SWITCHBOARD_CREDENTIAL_ADDRESS_BURST": str(2 * config.USERS),
            **config.SOAK_LIMITS,
        }

    def start(self) -> None:
        """Redis, PostgreSQL (migrated, with users), the instances, then the
        tokens, rooms and members through the API."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(password=secrets.token_hex(12)).start()
        self.postgres = PostgresCluster().start()
        self.database_url = self.postgres.create_database(DATABASE)
        prepare_database(
            {"DJANGO_SECRET_KEY": "migrate-only", "DATABASE_URL": self.database_url},
            usernames=self.usernames,
            password=PASSWORD,
        )
        # Shell limits must not leak in (isolate): every value an instance
        # sees is set here or is the default, as in tests/integration.
        self.deployment = Deployment(
            self.env(), usernames=self.usernames, password=PASSWORD,
            log_dir=self.log_dir,
        )  # fmt: skip
        for index in range(config.INSTANCES):
            self.deployment.add(f"instance-{'ab'[index]}")
        self.deployment.start()
        self._provision()

    def _provision(self) -> None:
        """Tokens, the public rooms and the private room with its members."""
        if self.deployment is None:
            raise StackError("the instances are not running")
        self.tokens = dict(self.deployment.fetch_tokens())
        owner = self.usernames[0]
        # One room per user in turn: each user's room creations are limited.
        for number, slug in enumerate([*self.public_rooms, config.HOT_ROOM]):
            creator = self.usernames[number % len(self.usernames)]
            self.deployment.create_room(slug, owner=creator, name=slug)
        self.deployment.create_room(
            config.PRIVATE_ROOM, owner=owner, name="Soak private", private=True
        )
        for user in self.usernames[1 : config.PRIVATE_MEMBERS]:
            self.deployment.api(
                "POST",
                f"/api/rooms/{config.PRIVATE_ROOM}/members/",
                {"username": user},
                user=owner,
            )

    def stop_instances(self) -> None:
        """SIGTERM every instance (Daphne's graceful shutdown)."""
        if self.deployment is not None:
            with contextlib.suppress(Exception):
                self.deployment.close()

    def close(self) -> None:
        self.stop_instances()
        for service in (self.redis, self.postgres):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.close()

    # --- HTTP API ----------------------------------------------------------

    def http_json(
        self,
        instance: int,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: object | None = None,
    ) -> tuple[int, Any]:
        """One request to an instance; (status, decoded JSON or text)."""
        app = self.instances[instance % len(self.instances)]
        return http_json(
            app,
            method,
            path,
            token=token,
            body=body,
            timeout=config.HTTP_TIMEOUT_SECONDS,
        )

    # --- PostgreSQL, read directly ---------------------------------------------

    def connect_db(self, database: str = DATABASE) -> psycopg.Connection[Any]:
        """An autocommit connection named ``soak``, so the connection counts
        in ``pg_stat_activity`` can leave the soak's own out."""
        if self.postgres is None:
            raise StackError("PostgreSQL is not running")
        return connect_url(self.postgres.url(database), application_name="soak")

    def read_rooms(self) -> tuple[dict[str, int], dict[str, list[Stored]]]:
        """(slug -> last_seq, slug -> stored messages in seq order)."""
        with self.connect_db() as conn:
            last_seq = dict(
                conn.execute("SELECT slug, last_seq FROM core_room").fetchall()
            )
            rows = conn.execute(
                "SELECT r.slug, m.seq, m.client_id, m.body, m.author_name "
                "FROM core_message m JOIN core_room r ON r.id = m.room_id "
                "ORDER BY r.slug, m.seq"
            ).fetchall()
        stored: dict[str, list[Stored]] = {slug: [] for slug in last_seq}
        for slug, seq, client_id, body, author in rows:
            stored[slug].append(Stored(seq, client_id, body, author))
        return last_seq, stored

    def read_last_seqs(self) -> dict[str, int]:
        with self.connect_db() as conn:
            return dict(conn.execute("SELECT slug, last_seq FROM core_room").fetchall())
