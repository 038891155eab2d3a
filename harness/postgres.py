"""A throwaway PostgreSQL cluster on loopback (``PostgresCluster``).

Plain SQL against it (counting connections, reading what was stored) goes
through ``PostgresCluster.connect`` or ``connect_url``, not through Django.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import psycopg
from psycopg import sql

from harness.process import (
    LOOPBACK,
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    ChildProcess,
    Service,
    ServiceFailed,
    ServiceUnavailable,
    free_port,
    run_as,
)


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


def give_to(path: Path, user: str) -> None:
    """Make ``user`` (and its primary group) the owner of ``path``."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresCluster(Service):
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
            give_to(self.directory, self.os_user)
        self._data = self.directory / "data"
        self._child = ChildProcess("postgres", self.directory / "postgres.log")

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

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database ``name`` (``[a-z_][a-z0-9_]*``); return its URL.

        ``template``: a copy of that database (``CREATE DATABASE ... TEMPLATE``),
        schema and rows; nobody may be connected to it while it is copied.
        """
        for checked in (name, template):
            if checked is not None and not _DATABASE_NAME.fullmatch(checked):
                raise ValueError(
                    f"database name {checked!r} must match {_DATABASE_NAME.pattern}"
                )
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(statement)
        return self.url(name)

    def _initdb(self) -> None:
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n")
        if self.os_user:
            give_to(password_file, self.os_user)
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
                **run_as(self.os_user),
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


def connect_url(
    url: str, *, application_name: str = "harness"
) -> psycopg.Connection[Any]:
    """An autocommit connection to a ``postgres://`` URL (a ``DATABASE_URL``),
    for reading or changing rows with plain SQL instead of through Django."""
    return psycopg.connect(
        url, autocommit=True, connect_timeout=5, application_name=application_name
    )
