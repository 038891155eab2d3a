"""What the bench measures: stacks of real server processes it starts itself.

A stack is one target on one server, two instances sharing the bench's Redis
(and, for Switchboard, its PostgreSQL): ``switchboard`` on Daphne or uvicorn
(the project exactly as deployed, token auth), ``tutorial`` on Daphne and
``raw`` on ``websockets`` (the baselines in ``bench/baselines``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.driver import HarnessError
from harness.process import (
    LOOPBACK,
    AppProcess,
    PostgresCluster,
    RedisServer,
    manage,
)

INSTANCES = 2
BENCH_USERS = 50
BENCH_LIMITS = {
    # One send budget per user: 50 users post for 1000 rooms here. The
    # check still runs (and costs what it costs); it just never refuses.
    "SWITCHBOARD_SEND_RATE_PER_SECOND": "100000",
    "SWITCHBOARD_SEND_BURST": "100000",
    "SWITCHBOARD_CONNECTIONS_PER_USER": "1000000",
    "SWITCHBOARD_ANONYMOUS_CONNECTIONS_PER_ADDRESS": "1000000",
    "SWITCHBOARD_CONNECTIONS_PER_PROCESS": "1000000",
    "SWITCHBOARD_HANDSHAKE_RATE_PER_ADDRESS": "1000000",
    "SWITCHBOARD_HANDSHAKE_BURST_PER_ADDRESS": "1000000",
    # Not SWITCHBOARD_HANDSHAKE_CONCURRENCY, its deadline or the shutdown's
    # reconnect rate: admission control bounds what a process takes on, not
    # what a person may, and the storm scenario measures it as it ships.
}
ROOMS_SLUG = "r-{:04d}"
# The handshake scenario's room: private, every bench user a member, with
# stored messages for ?after= to replay.
HANDSHAKE_SLUG = "handshake-private"
HANDSHAKE_MESSAGES = 20


class TutorialProcess(AppProcess):
    """The tutorial baseline under Daphne, as ``daphne`` would be run."""

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "daphne",
            "-b", LOOPBACK, "-p", str(self.port),
            "bench.baselines.tutorial_asgi:application",
        ]  # fmt: skip


class RawProcess(AppProcess):
    """The raw ``websockets`` + Redis pub/sub baseline."""

    loop = "uvloop"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "bench.baselines.raw_server",
            "--host", LOOPBACK, "--port", str(self.port), "--loop", self.loop,
        ]  # fmt: skip


class UvicornAsyncioProcess(AppProcess):
    """Switchboard on uvicorn with the stock asyncio loop instead of uvloop."""

    def argv(self) -> list[str]:
        return [*super().argv(), "--loop", "asyncio"]


PROVISION = textwrap.dedent(
    """
    import json
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone
    from rest_framework.authtoken.models import Token
    from core.models import Membership, Message, Room
    User = get_user_model()
    tokens = {}
    users = []
    for number in range(%(users)d):
        user, _ = User.objects.get_or_create(username="bench-%%02d" %% number)
        user.set_unusable_password()
        user.save()
        users.append(user)
        tokens[user.username] = Token.objects.get_or_create(user=user)[0].key
    rooms = [
        Room(slug=%(slug)r.format(n), name="Bench %%d" %% n) for n in range(%(rooms)d)
    ]
    Room.objects.bulk_create(rooms, ignore_conflicts=True)
    owner = users[0]
    private, _ = Room.objects.get_or_create(
        slug=%(handshake_slug)r,
        defaults={"name": "Bench handshake", "is_private": True, "owner": owner},
    )
    Membership.objects.bulk_create(
        [Membership(room=private, user=user) for user in users],
        ignore_conflicts=True,
    )
    with transaction.atomic():
        if not private.messages.exists():
            now = timezone.now()
            Message.objects.bulk_create(
                Message(
                    room=private, seq=seq, author=owner, author_name=owner.username,
                    body="Stored message %%d" %% seq, sent_at=now,
                )
                for seq in range(1, %(messages)d + 1)
            )
            private.last_seq = %(messages)d
            private.last_message_at = now
            private.save(update_fields=["last_seq", "last_message_at"])
    print("TOKENS=" + json.dumps(tokens))
    """
)


@dataclass
class Infrastructure:
    """Redis (always) and PostgreSQL (for Switchboard), shared by every stack."""

    log_dir: Path
    redis: RedisServer | None = None
    postgres: PostgresCluster | None = None
    database_url: str | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    tokens: list[str] = field(default_factory=list)
    rooms: int = 0

    def start_redis(self) -> RedisServer:
        if self.redis is None:
            self.redis = RedisServer().start()
        return self.redis

    def redis_pid(self) -> int | None:
        return listening_pid(self.start_redis().port)

    def postgres_pid(self) -> int | None:
        """The postmaster (its backends are its children)."""
        if self.postgres is None:
            return None
        return listening_pid(self.postgres.port)

    def switchboard_env(self, prefix: str) -> dict[str, str]:
        """The configuration variables (README) for one Switchboard stack."""
        if self.database_url is None:
            raise HarnessError("PostgreSQL was not provisioned")
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.start_redis().url,
            "DJANGO_SECRET_KEY": self.secret_key,
            "SWITCHBOARD_CHANNEL_PREFIX": prefix,
            # The load comes from one address and 50 users (thousands of
            # connections each): the per-user and per-address connection
            # limits are for people, not for a load generator.
            **BENCH_LIMITS,
        }

    def provision_switchboard(self, rooms: int) -> None:
        """Start PostgreSQL, migrate, create bench users, tokens and rooms.

        Users get no password (token auth only), so hashing costs nothing.
        The many small rooms of the ``rooms`` scenario and the handshake
        scenario's private room (members and stored messages too; made
        once) are created here; the rooms the other scenarios use are
        created through the API.
        """
        if self.postgres is None:
            self.postgres = PostgresCluster().start()
            self.database_url = self.postgres.create_database("switchboard_bench")
        env = self.switchboard_env("bench-provision")
        manage("migrate", "--noinput", env=env, timeout=300)
        code = PROVISION % {
            "users": BENCH_USERS,
            "slug": ROOMS_SLUG,
            "rooms": rooms,
            "handshake_slug": HANDSHAKE_SLUG,
            "messages": HANDSHAKE_MESSAGES,
        }
        result = manage("shell", "-c", code, env=env, timeout=300)
        line = next(
            (x for x in result.stdout.splitlines() if x.startswith("TOKENS=")), None
        )
        if line is None:
            raise HarnessError(f"provisioning printed no tokens:\n{result.stdout}")
        self.tokens = list(json.loads(line.removeprefix("TOKENS=")).values())
        self.rooms = rooms

    def flush_redis(self) -> None:
        client = self.start_redis().client()
        try:
            client.flushall()
        finally:
            client.close()

    def close(self) -> None:
        for service in (self.redis, self.postgres):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.close()


@dataclass
class Stack:
    """One target on one server: ``INSTANCES`` processes sharing Redis."""

    target: str
    server: str
    variant: str
    processes: list[AppProcess]
    headers: list[dict[str, str]]
    wait_greeting: bool
    client_ids: bool

    @property
    def label(self) -> str:
        suffix = f" ({self.variant})" if self.variant else ""
        return f"{self.target}/{self.server}{suffix}"

    @property
    def instances(self) -> list[list[Any]]:
        return [[LOOPBACK, process.port] for process in self.processes]

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes if process.pid]

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.close()


def start_stack(
    infra: Infrastructure, target: str, server: str, variant: str, number: int
) -> Stack:
    """Start ``INSTANCES`` processes of a target in parallel; wait for each."""
    prefix = f"bench{number}"
    redis_url = infra.start_redis().url
    infra.flush_redis()
    processes: list[AppProcess] = []
    for index in range(INSTANCES):
        name = f"{target}-{server}-{index}"
        log_path = infra.log_dir / f"{number:02d}-{name}.log"
        if target == "switchboard":
            env = infra.switchboard_env(prefix)
            kind = UvicornAsyncioProcess if variant == "asyncio loop" else AppProcess
            process = kind(env, server=server, name=name, log_path=log_path)  # type: ignore[arg-type]
        elif target == "tutorial":
            env = {
                "REDIS_URL": redis_url,
                "SWITCHBOARD_CHANNEL_PREFIX": prefix,
                "DJANGO_SETTINGS_MODULE": "bench.baselines.tutorial_settings",
            }
            process = TutorialProcess(env, name=name, log_path=log_path)
        else:
            env = {"REDIS_URL": redis_url, "RAW_PREFIX": prefix}
            process = RawProcess(env, name=name, log_path=log_path)
            if variant == "asyncio loop":
                process.loop = "asyncio"
        processes.append(process)
    try:
        for process in processes:
            process.start(wait=False)
        for process in processes:
            process.wait_ready()
    except Exception:
        for process in processes:
            with contextlib.suppress(Exception):
                process.close()
        raise
    if target == "switchboard":
        headers = [{"Authorization": f"Token {token}"} for token in infra.tokens]
    else:
        headers = [{}]
    return Stack(
        target=target,
        server=server,
        variant=variant,
        processes=processes,
        headers=headers,
        wait_greeting=target != "tutorial",
        client_ids=target == "switchboard",
    )


def create_room_via_api(stack: Stack, token: str, slug: str, name: str) -> None:
    """``POST /api/rooms/`` as a bench user; an existing slug is fine."""
    process = stack.processes[0]
    conn = http.client.HTTPConnection(LOOPBACK, process.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/api/rooms/",
            body=json.dumps({"name": name, "slug": slug}),
            headers={
                "Authorization": f"Token {token}",
                "Content-Type": "application/json",
            },
        )
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    finally:
        conn.close()
    if response.status == 201:
        return
    if response.status == 400 and "slug" in body:
        return  # made by an earlier stack of this run
    raise HarnessError(f"POST /api/rooms/ answered {response.status}: {body[:300]}")


def listening_pid(port: int) -> int | None:
    """The pid listening on a loopback TCP port (we run as its owner or root)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


def redis_connections_per_process(infra: Infrastructure, pids: list[int]) -> list[int]:
    """Redis clients per server process: ``CLIENT LIST`` matched to its sockets.

    Each client's ``addr`` port is the far end of one of the process's TCP
    sockets whose peer is Redis's port.
    """
    redis = infra.start_redis()
    client = redis.client()
    try:
        listed = client.client_list()
    finally:
        client.close()
    client_ports = {int(entry["addr"].rsplit(":", 1)[1]) for entry in listed}
    counts = []
    for pid in pids:
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            counts.append(-1)
            continue
        counts.append(
            sum(
                1
                for sock in sockets
                if sock.raddr
                and sock.raddr.port == redis.port
                and sock.laddr.port in client_ports
            )
        )
    return counts
