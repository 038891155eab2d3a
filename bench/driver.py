"""The orchestrator's handle on the load generator process."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.app import child_env
from harness.process import PROJECT_ROOT


class HarnessError(RuntimeError):
    """The bench itself failed (not a server being slow): exit non-zero."""


class LoadGenerator:
    """``python -m bench.loadgen`` in a child process, one command at a time."""

    def __init__(self, log_path: Path, seed: int) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            cwd=PROJECT_ROOT,
            env=child_env({"BENCH_SEED": str(seed)}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            process_group=0,
        )
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self._pending = b""
        self.call("ping", timeout=30)

    @property
    def pid(self) -> int:
        return self.process.pid

    def call(self, cmd: str, *, timeout: float, **arguments: Any) -> dict[str, Any]:
        """Send a command and wait up to ``timeout`` s for its reply.

        Raises ``HarnessError`` if the generator fails, dies or is late.
        """
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        line = json.dumps({"cmd": cmd, **arguments}) + "\n"
        try:
            self.process.stdin.write(line.encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            raise HarnessError(f"load generator exited; see {self.log_path}") from None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise HarnessError(
                    f"load generator gave no answer to {cmd!r} in {timeout:g} s; "
                    f"see {self.log_path}"
                )
            if self._selector.select(min(left, 1.0)):
                chunk = self.process.stdout.read(1 << 20)
                if not chunk:
                    raise HarnessError(
                        f"load generator exited during {cmd!r}; see {self.log_path}"
                    )
                self._pending += chunk
        raw, _, self._pending = self._pending.partition(b"\n")
        reply = json.loads(raw)
        if not reply.get("ok"):
            raise HarnessError(
                f"load generator failed {cmd!r}: {reply.get('error')}\n"
                f"{reply.get('traceback', '')}"
            )
        return reply

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        """Ask it to quit (it closes its connections); kill it if it lingers."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(b'{"cmd": "quit"}\n')
                self.process.stdin.close()
                self.process.wait(15)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.kill()
        self._selector.close()
        self._log.close()
