"""The machine, versions and code under test; and waiting for quiet servers."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench import config

PACKAGES = (
    "Django",
    "channels",
    "channels-redis",
    "daphne",
    "Twisted",
    "autobahn",
    "uvicorn",
    "httptools",
    "uvloop",
    "websockets",
    "redis",
    "msgpack",
    "psycopg",
    "psutil",
    "py-spy",
    "matplotlib",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS, interpreter and the open-files limit."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Installed versions of the packages on the measured paths."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found | (extra or {})


def raise_open_files_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit toward ``wanted`` (up to the hard one).

    Children inherit it: the servers, Redis and the load generator all hold
    one descriptor per connection.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_quiet(pids: list[int], limit: float = config.QUIET_LIMIT_SECONDS) -> bool:
    """Wait until the servers use under ``QUIET_CPU_FRACTION`` of a core."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            continue
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sum(_cpu(p) for p in processes)
        time.sleep(0.5)
        if sum(_cpu(p) for p in processes) - before < config.QUIET_CPU_FRACTION * 0.5:
            return True
    return False


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def git_state() -> dict[str, str]:
    """The commit, the trees of core/ and backend/, and their local changes.

    The trees and local changes identify the code under test (a commit that
    touches only bench/ or docs/ leaves them alone).
    """

    def run(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                cwd=Path(__file__).resolve().parents[1],
            ).stdout.rstrip()  # not strip(): porcelain lines start with a space
        except OSError:
            return ""

    changed = run("status", "--porcelain", "--", "core", "backend")
    return {
        "commit": run("rev-parse", "--short", "HEAD"),
        "core_tree": run("rev-parse", "--short", "HEAD:core"),
        "backend_tree": run("rev-parse", "--short", "HEAD:backend"),
        "local_changes": ", ".join(line[3:] for line in changed.splitlines()) or "none",
    }
