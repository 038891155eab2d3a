"""What the load generator measures besides frames: its send schedule and CPU.

``sample_cpu`` runs in the generator at the window's edges, so the CPU
figures cover exactly the window the deliveries are counted in.
"""

from __future__ import annotations

import contextlib
import resource
import time
from typing import Any

import psutil


def schedule(streams: list[list[Any]], duration: float) -> list[tuple[float, int]]:
    """Every (offset, publisher) of ``streams`` before ``duration``, in order."""
    events: list[tuple[float, int]] = []
    for publisher, rate, phase in streams:
        interval = 1.0 / rate
        count = max(0, int((duration - phase) / interval) + 1)
        events += [(phase + i * interval, publisher) for i in range(count)]
    events = [event for event in events if event[0] < duration]
    events.sort()
    return events


def _cpu_seconds(pid: int | None, *, with_children: bool = False) -> float | None:
    """User + system CPU seconds of a process; optionally of its children too.

    For PostgreSQL's postmaster, ``with_children`` adds the backends it has
    reaped (the kernel's cumulative child times) and those alive now, so
    short-lived backends (one per Django connection) are counted.
    """
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        seconds = times.user + times.system
        if with_children:
            seconds += times.children_user + times.children_system
            for child in process.children():
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    seconds += child_times.user + child_times.system
    except psutil.Error:
        return None
    return seconds


def sample_cpu(
    samples: dict[str, Any],
    label: str,
    pids: list[int],
    redis_pid: int | None,
    db_pid: int | None,
) -> None:
    """CPU seconds so far of servers, Redis, PostgreSQL, us and the machine."""
    servers = {str(pid): _cpu_seconds(pid) for pid in pids}
    own = resource.getrusage(resource.RUSAGE_SELF)
    machine = psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system
    busy += machine.irq + machine.softirq + machine.steal
    samples[label] = {
        "at": time.monotonic(),
        "servers": servers,
        "redis": _cpu_seconds(redis_pid),
        "database": _cpu_seconds(db_pid, with_children=True),
        "generator": own.ru_utime + own.ru_stime,
        "machine_busy": busy,
    }
