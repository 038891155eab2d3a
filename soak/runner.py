"""One soak run: start the stack, run the traffic, check, report.

Exit status: 0 when every criterion passed, 1 when one failed (the reasons
are printed), 2 when the harness itself failed (a service that did not
start); the instance logs stay in ``<output>/logs`` either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import environment
from harness.process import ServiceFailed, ServiceUnavailable
from soak import checks, config, plots, report
from soak.checks import ClientView
from soak.monitor import Sampler
from soak.stack import Stack, StackError
from soak.traffic import Traffic

OPEN_FILES_WANTED = 65536
SETTLE_DEADLINE_SECONDS = 10.0
POSTGRES_ERROR = re.compile(r"\b(ERROR|FATAL|PANIC):\s+(.*)")


def say(text: str) -> None:
    print(text, flush=True)


def run(minutes: float, output: Path, seed: int) -> int:
    duration = minutes * 60.0
    output.mkdir(parents=True, exist_ok=True)
    log_dir = output / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)  # logs are appended to: start clean
    limit = environment.raise_open_files_limit(OPEN_FILES_WANTED)
    started_at = datetime.now(UTC)
    code_at_start = environment.git_state()
    machine = environment.machine()
    say(
        f"soak: {minutes:g} min of traffic, seed {seed}; output {output}; "
        f"logs in {log_dir}; open files limit {limit}"
    )
    stack = Stack(log_dir=log_dir)
    try:
        say("soak: starting Redis, PostgreSQL (migrate, users, rooms), 2 instances")
        stack.start()
        say(
            "soak: instances on ports "
            + ", ".join(str(app.port) for app in stack.instances)
        )
        traffic, sampler = asyncio.run(_soak(stack, duration, seed))
        exited = []
        for app in stack.instances:
            try:
                app.check_alive()
            except ServiceFailed:
                exited.append(app.name)
        say("soak: reading the messages back from PostgreSQL")
        last_seq, stored = stack.read_rooms()
        before_stop = {app.name: app.log_text() for app in stack.instances}
        postgres_log = stack.postgres.log_text() if stack.postgres else ""
        redis_log = stack.redis.log_text() if stack.redis else ""
        stack.stop_instances()
        logs = {app.name: app.log_text() for app in stack.instances}
    except (ServiceFailed, ServiceUnavailable, StackError, TimeoutError) as exc:
        say(f"soak: harness error: {exc}")
        say(f"soak: logs kept in {log_dir}")
        return 2
    finally:
        stack.close()

    document = _document(
        traffic=traffic,
        sampler=sampler,
        last_seq=last_seq,
        stored=stored,
        logs=logs,
        before_stop=before_stop,
        postgres_log=postgres_log,
        redis_log=redis_log,
        exited=exited,
        minutes=minutes,
        seed=seed,
        started_at=started_at,
        machine=machine,
        code=code_at_start,
    )
    (output / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    table = report.markdown(document)
    (output / "results.md").write_text(table)
    plot = plots.plot(document, output / "soak.png")
    say("")
    say(table)
    say(f"soak: wrote {output / 'results.json'}, {output / 'results.md'}, {plot}")
    if document["failures"]:
        say("soak: FAIL")
        for line in document["failures"]:
            say(f"  - {line}")
        return 1
    say("soak: PASS")
    return 0


async def _soak(stack: Stack, duration: float, seed: int) -> tuple[Traffic, Sampler]:
    traffic = Traffic(stack, duration, seed)
    sampler = Sampler(stack, traffic)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    progress = asyncio.create_task(_progress(traffic, sampler))
    try:
        await traffic.run()
        await _settle(sampler)
    finally:
        progress.cancel()
        stop.set()
        await sampling
        await traffic.finish()
        sampler.close()
    return traffic, sampler


async def _settle(sampler: Sampler) -> None:
    """The final sample: poll until each instance's client sockets match the
    clients' open connections (closed ones gone), or a deadline."""
    deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
    while True:
        sample = await asyncio.to_thread(sampler.sample, "final")
        settled = all(
            figures.get("alive")
            and figures["client_sockets"] == figures["ws_open_by_clients"]
            for figures in sample["instances"].values()
        )
        if settled or time.monotonic() >= deadline:
            return
        sampler.samples.pop()  # only the last one is the final sample
        await asyncio.sleep(0.5)


async def _progress(traffic: Traffic, sampler: Sampler) -> None:
    """A line every 30 s, so a long run shows it is alive."""
    while True:
        await asyncio.sleep(30)
        sample = sampler.samples[-1] if sampler.samples else {}
        rss = ", ".join(
            f"{name} {figures.get('rss', 0) / 2**20:.0f} MiB"
            for name, figures in sample.get("instances", {}).items()
        )
        counts = traffic.tally.counts
        say(
            f"soak: t={traffic.elapsed():.0f}s acks={counts['acks']} "
            f"received={counts['messages received']} "
            f"reconnects={counts['connections opened']} "
            f"unexpected errors={sum(traffic.tally.errors_unexpected.values())} "
            f"closes={sum(traffic.tally.closes_unexpected.values())}; {rss}"
        )


def _postgres_errors(text: str) -> dict[str, int]:
    found: Counter[str] = Counter()
    for line in text.splitlines():
        match = POSTGRES_ERROR.search(line)
        if match:
            found[f"{match[1]}: {match[2][:80]}"] += 1
    return dict(found.most_common(10))


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _document(
    *,
    traffic: Traffic,
    sampler: Sampler,
    last_seq: dict[str, int],
    stored: dict[str, list[checks.Stored]],
    logs: dict[str, str],
    before_stop: dict[str, str],
    postgres_log: str,
    redis_log: str,
    exited: list[str],
    minutes: float,
    seed: int,
    started_at: datetime,
    machine: dict[str, Any],
    code: dict[str, str],
) -> dict[str, Any]:
    tally = traffic.tally
    messages = checks.account_messages(traffic.sent, traffic.acked, stored, last_seq)
    messages["unacked_at_end"] = traffic.unacked_at_end()
    messages["unacked_examples"] = traffic.unacked_examples()
    views = [
        ClientView(c.name, c.room, traffic.views.get(c.name, False), c.timeline)
        for c in traffic.clients
    ]
    visibility = checks.account_visibility(views, stored, last_seq)
    latencies = [seconds for _, seconds in tally.ack_latencies]
    frames = {
        "counts": dict(sorted(tally.counts.items())),
        "errors_unexpected": dict(tally.errors_unexpected),
        "errors_expected": dict(tally.errors_expected),
        "closes_unexpected": dict(tally.closes_unexpected),
        "closes_expected": dict(tally.closes_expected),
        "busy_refusals": dict(tally.busy),
        "anomalies": dict(tally.anomalies),
        "revocations": tally.revocations,
        "revocations_missed": tally.revocations_missed,
        "revocation_max_s": max(tally.revocation_seconds, default=None),
        "examples": tally.examples,
        "ack_p50_ms": _ms(_percentile(latencies, 0.5)),
        "ack_p99_ms": _ms(_percentile(latencies, 0.99)),
        "ack_max_ms": _ms(max(latencies, default=None)),
    }
    restart = traffic.redis_restart
    outage = _outage_counts(tally.unexpected_times, restart)
    frames["unexpected_in_outage"] = outage
    resources = checks.summarize_resources(
        sampler.samples, traffic.duration, restart.get("stopping_at")
    )
    window = None
    if "stopping_wall" in restart and "started_wall" in restart:
        window = (
            restart["stopping_wall"] - 1,  # log stamps are cut to the second
            restart["started_wall"] + config.OUTAGE_GRACE_SECONDS,
        )
    log_scans = {}
    for name, text in logs.items():
        scan = checks.scan_log(text, window)
        shutdown = checks.scan_log(text[len(before_stop.get(name, "")) :])
        scan["during_shutdown"] = {
            "error_lines": shutdown["error_lines"],
            "tracebacks": shutdown["tracebacks"],
        }
        log_scans[name] = scan
    result = {
        "soak": {
            "minutes": minutes,
            "duration_s": traffic.duration,
            "seed": seed,
            "started_at": started_at.isoformat(timespec="seconds"),
            "clients": len(traffic.clients),
            "rooms": len(last_seq),
            "instances": len(logs),
            "redis_restart": restart,
            "removals": traffic.removals,
            "drain": traffic.drain,
            "stored_messages": sum(len(rows) for rows in stored.values()),
            "hot_room_last_seq": last_seq.get(config.HOT_ROOM),
            "limits": config.SOAK_LIMITS,
        },
        "machine": machine,
        "versions": environment.versions(),
        "code": code,
        "messages": messages,
        "visibility": visibility,
        "frames": frames,
        "logs": log_scans,
        "exited": exited,
        "postgres_log_errors": _postgres_errors(postgres_log),
        "redis_log_tail": redis_log.splitlines()[-15:],
        "resources": resources,
        "events": tally.events,
        "ack_latency_series": [
            [round(t, 2), round(s * 1000, 1)] for t, s in tally.ack_latencies
        ],
        "samples": sampler.samples,
    }
    found = checks.criteria(result)
    result["criteria"] = [c.as_dict() for c in found]
    result["failures"] = checks.failures(found)
    result["passed"] = not result["failures"]
    return result


def _outage_counts(
    times: list[tuple[float, str]], restart: dict[str, float]
) -> dict[str, int]:
    """Unexpected closes and errors from the Redis stop until
    ``OUTAGE_GRACE_SECONDS`` after it answered again, by kind."""
    if "stopping_at" not in restart or "started_at" not in restart:
        return {}
    start = restart["stopping_at"]
    end = restart["started_at"] + config.OUTAGE_GRACE_SECONDS
    return dict(Counter(kind for t, kind in times if start <= t <= end))


def _ms(seconds: float | None) -> float | None:
    with contextlib.suppress(TypeError):
        return round(seconds * 1000, 1)  # type: ignore[operator]
    return None
