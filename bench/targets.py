"""What the bench measures: stacks of real server processes it starts itself.

A stack is one target on one server, two instances sharing the bench's Redis
(and, for Switchboard, its PostgreSQL): ``switchboard`` on Daphne or uvicorn
(the project exactly as deployed, token auth), ``tutorial`` on Daphne and
``raw`` on ``websockets`` (the baselines in ``bench/baselines``).
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.driver import HarnessError
from harness.app import AppProcess
from harness.deployment import Deployment, prepare_database
from harness.http import HTTP_ERRORS, ApiError, create_room
from harness.postgres import PostgresCluster
from harness.process import LOOPBACK
from harness.redis_server import RedisServer

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
# Switchboard on channels_redis' RedisChannelLayer (the Channels tutorial's
# layer) instead of its default pub/sub layer: what switching buys a team.
LIST_LAYER = "list layer"
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


BENCH_USERNAMES = [f"bench-{number:02d}" for number in range(BENCH_USERS)]
# Hashed once per user by ensure_user and once per sign-in, before timing.
BENCH_PASSWORD = "bench-Password-1"  # noqa: S105 (throwaway users)
# Only the provisioning instance: 50 sign-ins from one address and 1,000
# rooms from one owner, at once.
PROVISION_LIMITS = {
    # Every bench user signs in from 127.0.0.1 once, for its token.
    "SWITCHBOARD_CREDENTIAL_ADDRESS_BURST": "1000000",
    "SWITCHBOARD_ROOM_CREATE_BURST": "1000000",
    "SWITCHBOARD_ROOM_CREATE_RATE_PER_SECOND": "1000000",
}


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

        Users are made with ``manage.py ensure_user``; everything else goes
        through the HTTP API of one provisioning instance, closed before any
        stack starts: tokens, the many small rooms of the ``rooms`` scenario
        and the handshake scenario's private room (members and stored
        messages too; made once). The rooms the other scenarios use are
        created through the API by the scenarios.
        """
        if self.postgres is None:
            self.postgres = PostgresCluster().start()
            self.database_url = self.postgres.create_database("switchboard_bench")
        env = self.switchboard_env("bench-provision")
        prepare_database(env, usernames=BENCH_USERNAMES, password=BENCH_PASSWORD)
        provisioner = Deployment(
            {**env, **PROVISION_LIMITS},
            usernames=BENCH_USERNAMES,
            password=BENCH_PASSWORD,
            name="provision",
            count=1,
            log_dir=self.log_dir,
        )
        try:
            provisioner.start()
            tokens = provisioner.fetch_tokens()
            self._provision_rooms(provisioner, rooms)
        except (ApiError, *HTTP_ERRORS) as exc:
            raise HarnessError(f"provisioning through the API failed: {exc}") from exc
        finally:
            provisioner.close()
        self.tokens = [tokens[name] for name in BENCH_USERNAMES]
        self.rooms = rooms

    @staticmethod
    def _provision_rooms(provisioner: Deployment, rooms: int) -> None:
        app = provisioner.instances[0]
        owner = BENCH_USERNAMES[0]
        token = provisioner.token(owner)

        def small_room(number: int) -> None:
            slug = ROOMS_SLUG.format(number)
            create_room(app, token, slug, name=f"Bench {number}", exist_ok=True)

        # A few at a time: Django serves sync views on one thread.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(small_room, range(rooms)))
        made = create_room(
            app, token, HANDSHAKE_SLUG, name="Bench handshake", private=True,
            exist_ok=True,
        )  # fmt: skip
        if made is None:
            return  # an earlier run's: members and messages are there
        for user in BENCH_USERNAMES[1:]:
            path = f"/api/rooms/{HANDSHAKE_SLUG}/members/"
            provisioner.api("POST", path, {"username": user}, user=owner)
        for seq in range(1, HANDSHAKE_MESSAGES + 1):
            provisioner.post(HANDSHAKE_SLUG, f"Stored message {seq}", user=owner)

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
            if variant == LIST_LAYER:
                env["SWITCHBOARD_CHANNEL_LAYER"] = "lists"
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
    try:
        create_room(stack.processes[0], token, slug, name=name, exist_ok=True)
    except ApiError as exc:  # refused for another reason than the slug
        raise HarnessError(str(exc)) from None


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
