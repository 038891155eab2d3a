"""Run the selected scenarios on every selected stack, then report.

Order: Redis, then PostgreSQL and provisioning (if Switchboard is selected),
then one stack at a time (two instances + a fresh load generator), each
running idle first (so its memory figure starts from a fresh process), then
handshake, fanout, rooms, send and storm (which stops instance B and starts
it again).
Baselines run in the same invocation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import config, environment, plots, report, scenarios
from bench.config import Plan
from bench.driver import HarnessError, LoadGenerator
from bench.targets import Infrastructure, start_stack
from harness.process import ServiceFailed, ServiceUnavailable

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPEN_FILES_WANTED = 65536
# Past this, optional trade-off measurements are skipped (with a note) so the
# full run stays under 15 minutes even when a target connects slowly.
SOFT_LIMIT_SECONDS = 13 * 60
# storm last: it SIGTERMs instance B (then starts it again).
SCENARIO_ORDER = ("idle", "handshake", "fanout", "rooms", "send", "storm")


@dataclass(frozen=True)
class StackPlan:
    """One stack to start and the scenarios to run on it."""

    target: str
    server: str
    variant: str
    scenarios: tuple[str, ...]
    deflate: bool = False
    negotiation: bool = False


def say(text: str) -> None:
    print(text, flush=True)


def run(
    plan: Plan,
    stacks: list[StackPlan],
    *,
    output_dir: Path,
    profile: bool,
    description: str,
) -> int:
    """Run everything; 0 when the harness worked, 2 when it did not."""
    started = time.monotonic()
    limit = environment.raise_open_files_limit(OPEN_FILES_WANTED)
    log_dir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    machine = environment.machine()
    code_at_start = environment.git_state()
    say(f"bench: {description}; logs in {log_dir}; open files limit {limit}")
    infra = Infrastructure(log_dir=log_dir)
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    extras: dict[str, Any] = {"negotiated_extensions": {}}
    steps = itertools.count(1)
    try:
        infra.start_redis()
        if any(s.target == "switchboard" for s in stacks):
            say("provisioning PostgreSQL: migrate, users, tokens, rooms")
            rooms = plan.rooms if any("rooms" in s.scenarios for s in stacks) else 0
            infra.provision_switchboard(rooms=rooms)
        for number, stack_plan in enumerate(stacks, start=1):
            if stack_plan.variant and _late(started):
                notes.append(f"skipped {stack_plan.variant} stack: time budget")
                continue
            runs += _run_stack(
                infra,
                stack_plan,
                number,
                plan,
                output_dir,
                steps,
                profile,
                notes,
                extras,
                started,
            )
        server_versions = _server_versions(infra)
    except (HarnessError, ServiceFailed, ServiceUnavailable, TimeoutError) as exc:
        say(f"bench: harness error: {exc}")
        say(f"bench: logs kept in {log_dir}")
        return 2
    finally:
        infra.close()
    wall = time.monotonic() - started
    code_at_end = environment.git_state()
    code_at_end.pop("commit")
    if code_at_end.items() - code_at_start.items():
        notes.append(
            f"the code under test changed during the run (at start: {code_at_start})"
        )
    document = _document(
        runs, machine, server_versions, code_at_start, notes, extras, wall, plan
    )
    _write(document, output_dir)
    say("")
    say(report.tables(runs))
    say(report.ratio_lines(document["ratios"], document["handshake_ratios"]))
    say(report.check_lines(document["checks"]))
    for stack_label, granted in extras["negotiated_extensions"].items():
        say(
            f"permessage-deflate offered by a websockets client to {stack_label}: "
            f"granted {granted.get('offered') or 'nothing'}"
        )
    for note in notes:
        say(f"note: {note}")
    say(f"bench: wrote {output_dir / 'latest.json'} and plots; wall time {wall:.0f} s")
    say(f"bench: server and generator logs in {log_dir}")
    return 0


def _run_stack(
    infra: Infrastructure,
    stack_plan: StackPlan,
    number: int,
    plan: Plan,
    output_dir: Path,
    steps: itertools.count,
    profile: bool,
    notes: list[str],
    extras: dict[str, Any],
    started: float,
) -> list[dict[str, Any]]:
    label = f"{stack_plan.target}/{stack_plan.server}"
    if stack_plan.variant:
        label += f" ({stack_plan.variant})"
    say(f"== {label}: starting 2 instances")
    stack = start_stack(
        infra, stack_plan.target, stack_plan.server, stack_plan.variant, number
    )
    gen = None
    runs: list[dict[str, Any]] = []
    try:
        gen = LoadGenerator(infra.log_dir / f"{number:02d}-loadgen.log", config.SEED)
        session = scenarios.Session(
            infra=infra,
            stack=stack,
            gen=gen,
            plan=plan,
            results_dir=output_dir,
            steps=steps,
            profile=profile,
            notes=notes,
        )
        for name in SCENARIO_ORDER:
            if name not in stack_plan.scenarios:
                continue
            began = time.monotonic()
            found = _scenario(session, name, stack_plan)
            runs += found
            _progress(label, name, found, time.monotonic() - began)
        if stack_plan.deflate and _late(started):
            notes.append(f"skipped {label} permessage-deflate step: time budget")
        elif stack_plan.deflate:
            began = time.monotonic()
            found = scenarios.run_fanout(session, (plan.deflate_step,), deflate=True)
            runs += found
            _progress(label, "fanout, clients offer permessage-deflate", found,
                      time.monotonic() - began)  # fmt: skip
        if (
            "fanout" in stack_plan.scenarios
            and stack_plan.target == "switchboard"
            and stack_plan.server == "daphne"  # as deployed
            and not stack_plan.variant
        ):
            # The same step to other readers: Server-Sent Events streams,
            # and watchers in another room (activity frames).
            for option, what in (
                ("sse", "fanout to Server-Sent Events streams"),
                ("watch", "fanout to watchers (activity frames)"),
            ):
                if _late(started):
                    notes.append(f"skipped {label} {what}: time budget")
                    continue
                began = time.monotonic()
                found = scenarios.run_fanout(
                    session, (plan.sse_step,), **{option: True}
                )
                runs += found
                _progress(label, what, found, time.monotonic() - began)
        if stack_plan.negotiation:
            extras["negotiated_extensions"][label] = scenarios.negotiated_extensions(
                session
            )
    finally:
        if gen is not None:
            gen.close()
        stack.close()
    return runs


def _late(started: float) -> bool:
    return time.monotonic() - started > SOFT_LIMIT_SECONDS


def _scenario(
    session: scenarios.Session, name: str, stack_plan: StackPlan
) -> list[dict[str, Any]]:
    if name == "idle":
        return scenarios.run_idle(session)
    if name == "handshake":
        return scenarios.run_handshake(session)
    if name == "fanout":
        # A variant runs one step, next to the same step on the default stack.
        steps = session.plan.asyncio_loop_steps if stack_plan.variant else None
        return scenarios.run_fanout(session, steps)
    if name == "rooms":
        return scenarios.run_rooms(session)
    if name == "storm":
        return scenarios.run_storm(session)
    return scenarios.run_send(session)


def _progress(
    label: str, name: str, found: list[dict[str, Any]], seconds: float
) -> None:
    say(f"   {name} done in {seconds:.0f} s")
    for run in found:
        if run["scenario"] == "idle":
            say(
                f"     {run['connections']:,} open, "
                f"{report._fmt(run['rss_kib_per_conn'])} KiB/conn"
            )
            continue
        if run["scenario"] == "handshake":
            say(
                f"     {run['connections']:,} handshakes at "
                f"{report._fmt(run['handshakes_per_s'], 0)}/s, "
                f"{report._fmt(run['server_cpu_ms_per_handshake'])} ms CPU each; "
                f"replays not as asked {run['replay_mismatches']}, "
                f"errors {report._codes(run['errors'])}"
            )
            continue
        if run["scenario"] == "storm":
            say(
                f"     {run['resumed']:,} of {run['movers']:,} movers resumed, "
                f"all in {report._fmt(run['all_resumed_seconds'], 2)} s; "
                f"lost {run['lost']}, dup {run['duplicates']}, "
                f"stayers p99 {report._fmt(run['p99_ms'])} ms, "
                f"refused {report._codes(run['refusals'])}"
            )
            continue
        say(
            f"     {run['subscribers']:>5} subs @ {run['rate_per_s']:g}/s: "
            f"{run['deliveries_per_s']:,.0f}/s of {run['offered_per_s']:,.0f}, "
            f"p99 {report._fmt(run['p99_ms'])} ms, lost {run['lost']}, "
            f"{report._fmt(run['cpu_us_per_delivery'])} µs/delivery, "
            f"other CPU {report._fmt(run['other_cpu_pct'], 0)}%"
            + (
                f", ack p99 {report._fmt(run['ack_p99_ms'])} ms"
                if run["scenario"] == "send"
                else ""
            )
        )


def _server_versions(infra: Infrastructure) -> dict[str, str]:
    found = {}
    if infra.redis is not None:
        client = infra.redis.client()
        with contextlib.suppress(Exception):
            found["redis-server"] = client.info("server")["redis_version"]
        client.close()
    if infra.postgres is not None:
        with contextlib.suppress(Exception), infra.postgres.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgresql"] = row[0] if row else "unknown"
    return found


def _document(
    runs: list[dict[str, Any]],
    machine: dict[str, Any],
    server_versions: dict[str, str],
    code: dict[str, str],
    notes: list[str],
    extras: dict[str, Any],
    wall: float,
    plan: Plan,
) -> dict[str, Any]:
    machine = machine | {
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    return {
        "runs": runs,
        "machine": machine,
        "versions": environment.versions(server_versions),
        "code": code,
        "plan": dataclasses.asdict(plan),
        "wall_seconds": round(wall, 1),
        "ratios": report.ratios(runs),
        "handshake_ratios": report.handshake_ratios(runs),
        "checks": report.checks(runs),
        "extras": extras,
        "notes": notes,
        "command": " ".join(sys.argv),
    }


def _write(document: dict[str, Any], output_dir: Path) -> None:
    path = output_dir / "latest.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    temporary.replace(path)
    plots.all_plots(document["runs"], output_dir)
