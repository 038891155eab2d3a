"""The project itself: Daphne or uvicorn processes, ``manage.py`` runs, env.

Users and rooms are made with ``ensure_users`` and ``ensure_room`` (the
``ensure_user`` and ``ensure_room`` management commands, which go through
``core.services``) or through the HTTP API, never with Python source handed
to ``manage.py shell``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

from harness.http import HTTP_ERRORS, request
from harness.process import (
    LOOPBACK,
    PROJECT_ROOT,
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    ChildProcess,
    Service,
    ServiceFailed,
    free_port,
)

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


# The one password variable ``manage.py ensure_user`` reads.
ENSURE_USER_PASSWORD = "ENSURE_USER_PASSWORD"


def ensure_users(
    env: Mapping[str, str],
    usernames: list[str] | tuple[str, ...],
    password: str,
    *,
    staff: bool = False,
    timeout: float = 300.0,
) -> None:
    """``manage.py ensure_user``: create these active users with ``password``.

    The password travels in the environment, not on the command line.
    Existing users keep theirs; ``staff`` only ever adds the staff flag.
    """
    if not usernames:
        return
    extra = ["--staff"] if staff else []
    manage(
        "ensure_user",
        *usernames,
        *extra,
        env={**env, ENSURE_USER_PASSWORD: password},
        timeout=timeout,
    )


def ensure_room(env: Mapping[str, str], slug: str, name: str | None = None) -> None:
    """``manage.py ensure_room``: a public room, created once."""
    manage("ensure_room", slug, "--name", name or slug, env=env)


Server = Literal["daphne", "uvicorn"]


class AppProcess(Service):
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
        self._child = ChildProcess(name, log_path)

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
            ignore=HTTP_ERRORS,
        )

    def _healthz(self) -> bool:
        status = request(self.url, "GET", "/healthz", timeout=2).status
        if status != 200:
            raise ConnectionError(f"GET /healthz answered {status}")
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
