"""What every service of the harness shares: one child process with a log.

Each service runs one real process on a free loopback port with a temporary
directory of its own.  ``start()`` returns only once the service answers;
``stop()`` ends the process but keeps its directory so it can be restarted on
the same port; ``close()`` (or leaving the ``with`` block) stops it and
removes the directory.

Every wait has a deadline.  A service that exits or does not answer in time
raises ``ServiceFailed`` with the tail of its log; a missing binary raises
``ServiceUnavailable`` naming the package that provides it.
"""

from __future__ import annotations

import atexit
import logging
import pwd
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from harness.waiting import wait_until

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
LOG_TAIL_LINES = 40


class ServiceUnavailable(Exception):
    """A service cannot run here: a binary or a system user is missing."""


class ServiceFailed(RuntimeError):
    """A service exited or did not answer in time; the message has its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# Children still running when the interpreter exits (a test run aborted
# between start and close) are killed rather than left behind.
_running_children: set[ChildProcess] = set()


@atexit.register
def _kill_leftover_children() -> None:
    for child in list(_running_children):
        child.kill()


def run_as(user: str | None) -> dict[str, Any]:
    """Popen arguments that switch to ``user`` and its group only, or none."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class ChildProcess:
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
                **run_as(user),
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


class Service:
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
