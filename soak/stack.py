"""The processes under soak: Redis, PostgreSQL and two Daphne instances.

All three come from the project's harness (harness/process.py), as
they do for the integration tier and the bench: ``RedisServer``,
``PostgresCluster`` (migrated with ``manage.py migrate``) and ``AppProcess``
running exactly ``daphne backend.asgi:application``. Users get API tokens
and no password (nothing to hash), as the bench's do.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from harness.process import (
    LOOPBACK,
    AppProcess,
    PostgresCluster,
    RedisServer,
    manage,
)
from soak import config
from soak.checks import Stored

DATABASE = "switchboard_soak"
CHANNEL_PREFIX = "soak"


def username(number: int) -> str:
    return f"soak-u{number:02d}"


def room_slug(number: int) -> str:
    return f"soak-r{number:02d}"


PROVISION = textwrap.dedent(
    """
    import json
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token
    from core.models import Membership, Room
    User = get_user_model()
    tokens = {}
    users = []
    for name in %(users)r:
        user, _ = User.objects.get_or_create(username=name)
        user.set_unusable_password()
        user.save()
        users.append(user)
        tokens[name] = Token.objects.get_or_create(user=user)[0].key
    for slug in %(rooms)r:
        Room.objects.get_or_create(slug=slug, defaults={"name": slug})
    private, _ = Room.objects.get_or_create(
        slug=%(private)r,
        defaults={"name": "Soak private", "is_private": True, "owner": users[0]},
    )
    Membership.objects.bulk_create(
        [Membership(room=private, user=user) for user in users[:%(members)d]],
        ignore_conflicts=True,
    )
    print("TOKENS=" + json.dumps(tokens))
    """
)


class StackError(RuntimeError):
    """Provisioning or an API call the soak depends on failed."""


@dataclass
class Stack:
    """Redis, PostgreSQL, the instances, and who may sign in."""

    log_dir: Path
    redis: RedisServer | None = None
    postgres: PostgresCluster | None = None
    database_url: str = ""
    instances: list[AppProcess] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))

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
        env = {
            "DJANGO_SECRET_KEY": self.secret_key,
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "SWITCHBOARD_CHANNEL_PREFIX": CHANNEL_PREFIX,
            **config.SOAK_LIMITS,
        }
        # Limits from the shell must not leak in: every value an instance
        # sees is set here or is the default (as tests/integration does).
        for key in os.environ:
            if key.startswith("SWITCHBOARD_") and key not in env:
                env[key] = ""
        return env

    def start(self) -> None:
        """Redis, PostgreSQL (migrated, provisioned), then the instances."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(password=secrets.token_hex(12)).start()
        self.postgres = PostgresCluster().start()
        self.database_url = self.postgres.create_database(DATABASE)
        env = {"DJANGO_SECRET_KEY": "migrate-only", "DATABASE_URL": self.database_url}
        manage("migrate", "--noinput", env=env, timeout=300)
        code = PROVISION % {
            "users": self.usernames,
            "rooms": [*self.public_rooms, config.HOT_ROOM],
            "private": config.PRIVATE_ROOM,
            "members": config.PRIVATE_MEMBERS,
        }
        result = manage("shell", "-c", code, env=env, timeout=300)
        line = next(
            (x for x in result.stdout.splitlines() if x.startswith("TOKENS=")), None
        )
        if line is None:
            raise StackError(f"provisioning printed no tokens:\n{result.stdout}")
        self.tokens = json.loads(line.removeprefix("TOKENS="))
        for index in range(config.INSTANCES):
            name = f"instance-{'ab'[index]}"
            self.instances.append(
                AppProcess(self.env(), name=name, log_path=self.log_dir / f"{name}.log")
            )
        for app in self.instances:  # launched together, so they boot in parallel
            app.start(wait=False)
        for app in self.instances:
            app.wait_ready()

    def stop_instances(self) -> None:
        """SIGTERM every instance (Daphne's graceful shutdown)."""
        for app in self.instances:
            with contextlib.suppress(Exception):
                app.close()

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
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Token {token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(
            LOOPBACK, app.port, timeout=config.HTTP_TIMEOUT_SECONDS
        )
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw

    # --- PostgreSQL, read directly ---------------------------------------------

    def connect_db(self, database: str = DATABASE) -> psycopg.Connection[Any]:
        """An autocommit connection named ``soak``, so the connection counts
        in ``pg_stat_activity`` can leave the soak's own out."""
        if self.postgres is None:
            raise StackError("PostgreSQL is not running")
        pg = self.postgres
        return psycopg.connect(
            host=LOOPBACK,
            port=pg.port,
            user=pg.user,
            password=pg.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
            application_name="soak",
        )

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
