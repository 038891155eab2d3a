"""Samples of the processes under soak, every ``SAMPLE_SECONDS``.

Per instance (psutil): RSS, open descriptors, threads, CPU seconds, and its
TCP sockets by peer: client sockets on its own port (by state), connections
to Redis and to PostgreSQL. Next to them, how many WebSockets the soak's
clients hold open to it at that moment. Then Redis's ``INFO clients``
``connected_clients`` (the probe's own connection taken off) and
PostgreSQL's ``pg_stat_activity``: client connections to the app database
(the soak's own reads excluded by their application name).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psutil
import psycopg

from soak import config
from soak.stack import DATABASE, Stack
from soak.traffic import Traffic

APPLICATION_NAME = "soak"


class Sampler:
    def __init__(self, stack: Stack, traffic: Traffic) -> None:
        self.stack = stack
        self.traffic = traffic
        self.samples: list[dict[str, Any]] = []
        self._processes: dict[int, psutil.Process] = {}
        self._pg: psycopg.Connection[Any] | None = None

    def _process(self, pid: int) -> psutil.Process:
        if pid not in self._processes:
            self._processes[pid] = psutil.Process(pid)
        return self._processes[pid]

    def _instance(self, index: int) -> dict[str, Any]:
        app = self.stack.instances[index]
        redis_port = self.stack.redis.port if self.stack.redis else -1
        pg_port = self.stack.postgres.port if self.stack.postgres else -1
        figures: dict[str, Any] = {
            "ws_open_by_clients": self.traffic.open_by_instance[index]
        }
        try:
            process = self._process(app.pid or -1)
            with process.oneshot():
                times = process.cpu_times()
                figures |= {
                    "rss": process.memory_info().rss,
                    "fds": process.num_fds(),
                    "threads": process.num_threads(),
                    "cpu_s": round(times.user + times.system, 3),
                }
            sockets = process.net_connections(kind="tcp")
        except psutil.Error:
            return figures | {"alive": False}
        states: dict[str, int] = {}
        redis = postgres = 0
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                continue
            if sock.laddr and sock.laddr.port == app.port:
                states[sock.status] = states.get(sock.status, 0) + 1
            elif sock.raddr and sock.raddr.port == redis_port:
                redis += 1
            elif sock.raddr and sock.raddr.port == pg_port:
                postgres += 1
        return figures | {
            "alive": True,
            "client_sockets": sum(states.values()),
            "client_socket_states": states,
            "redis_sockets": redis,
            "postgres_sockets": postgres,
        }

    def _redis_clients(self) -> int | None:
        redis = self.stack.redis
        if redis is None or not redis.running:
            return None
        try:
            client = redis.client(socket_timeout=1, socket_connect_timeout=1)
            try:
                return int(client.info("clients")["connected_clients"]) - 1
            finally:
                client.close()
        except Exception:  # down, restarting, not answering: no figure
            return None

    def _postgres(self) -> dict[str, int | None]:
        try:
            if self._pg is None or self._pg.closed:
                self._pg = self.stack.connect_db("postgres")
            row = self._pg.execute(
                "SELECT count(*) FILTER (WHERE datname = %s), count(*) "
                "FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND application_name IS DISTINCT FROM %s",
                (DATABASE, APPLICATION_NAME),
            ).fetchone()
        except psycopg.Error:
            return {"pg_app_connections": None, "pg_client_connections": None}
        return {"pg_app_connections": row[0], "pg_client_connections": row[1]}

    def sample(self, label: str = "") -> dict[str, Any]:
        """One sample of everything (blocking: run it in a thread)."""
        sample: dict[str, Any] = {"t": round(self.traffic.elapsed(), 2)}
        if label:
            sample["label"] = label
        sample["instances"] = {
            app.name: self._instance(index)
            for index, app in enumerate(self.stack.instances)
        }
        sample["redis_clients"] = self._redis_clients()
        sample |= self._postgres()
        self.samples.append(sample)
        return sample

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(config.SAMPLE_SECONDS):
                    await stop.wait()

    def close(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
