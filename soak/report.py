"""The soak's Markdown: what docs/reliability.md's results section shows.

``markdown(document)`` is printed at the end of a run and written to
``<output>/results.md``; ``python -m soak --markdown [results.json]``
prints it again from a results file.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{key}: {value:,}" for key, value in sorted(counts.items()))


def markdown(document: dict[str, Any]) -> str:
    soak = document["soak"]
    messages = document["messages"]
    visibility = document["visibility"]
    frames = document["frames"]
    counts = Counter(frames["counts"])
    restart = soak["redis_restart"]
    verdict = "PASS" if document["passed"] else "FAIL"
    lines = [
        f"Soak of {soak['started_at']}: {soak['minutes']:g} min of traffic, "
        f"{soak['clients']} clients, {soak['rooms']} rooms, "
        f"{soak['instances']} Daphne instances, seed {soak['seed']}; "
        f"{document['machine']['cores']} cores ({document['machine']['cpu_model']}). "
        f"Verdict: **{verdict}**.",
        "",
        "| check | value | limit | result | note |",
        "|---|---|---|---|---|",
    ]
    for criterion in document["criteria"]:
        lines.append(
            f"| {criterion['name']} | {_num(criterion['value'], 3)} | "
            f"{criterion['limit']} | {'pass' if criterion['passed'] else '**FAIL**'} | "
            f"{criterion['note']} |"
        )
    lines += [
        "",
        "| traffic | |",
        "|---|---|",
        f"| messages sent / acknowledged / stored | {_num(counts['sends'])} / "
        f"{_num(messages['acknowledged'])} / {_num(soak['stored_messages'])} |",
        f"| hot room's last seq | {_num(soak['hot_room_last_seq'])} |",
        f"| message frames received | {_num(counts['messages received'])} "
        f"(duplicates dropped by seq: {_num(visibility['duplicates_dropped'])}) |",
        f"| resends (reconnects, internal_error) | {_num(counts['resends'])} |",
        f"| ack latency p50 / p99 / max | {_num(frames['ack_p50_ms'], 1)} / "
        f"{_num(frames['ack_p99_ms'], 1)} / {_num(frames['ack_max_ms'], 1)} ms |",
        f"| connections opened | {_num(counts['connections opened'])} "
        f"(client closes {_num(counts['client closes'])}, TCP drops "
        f"{_num(counts['client drops TCP'])}, fresh tabs "
        f"{_num(counts['fresh tabs (resume from 0)'])}) |",
        f"| replays / incomplete (> 1000) | {_num(counts['replays'])} / "
        f"{_num(counts['replays incomplete'])} |",
        f"| history requests / gap fills / pages scrolled back | "
        f"{_num(counts['history requests'])} / {_num(counts['gap fills'])} / "
        f"{_num(counts['history pages back'])} |",
        f"| typing sent / received | {_num(counts['typing sent'])} / "
        f"{_num(counts['typing received'])} |",
        f"| member removals (4403 closes, slowest) | {len(soak['removals'])} "
        f"({frames['revocations']}, "
        f"{_num(frames['revocation_max_s'], 2)} s) |",
        f"| Redis down | {_num(restart.get('stopping_at'), 1)} s → "
        f"{_num(restart.get('started_at'), 1)} s |",
        f"| error frames, unexpected | {_counts(frames['errors_unexpected'])} |",
        f"| error frames, expected | {_counts(frames['errors_expected'])} |",
        f"| closes, unexpected | {_counts(frames['closes_unexpected'])} |",
        f"| unexpected closes and errors from the Redis stop to 10 s after "
        f"its start | {_counts(frames.get('unexpected_in_outage', {}))} |",
        f"| closes, expected | {_counts(frames['closes_expected'])} |",
        f"| busy refusals (4503) | {_counts(frames['busy_refusals'])} |",
        f"| drain | {_num(soak['drain'].get('seconds'), 1)} s, "
        f"{'complete' if soak['drain'].get('complete') else 'NOT complete'} |",
        "",
        "| instance | RSS first → last (max), MiB | RSS slope, last half | "
        "fds first → last (max) | other fds: first-half max → end | "
        "Redis / PG sockets, max | ERROR lines (in the outage) / tracebacks |",
        "|---|---|---|---|---|---|---|",
    ]
    resources = document["resources"]
    for name, figures in sorted(resources["instances"].items()):
        scan = document["logs"].get(name, {})
        lines.append(
            f"| {name} | {_num(figures['rss_mib_first'], 1)} → "
            f"{_num(figures['rss_mib_last'], 1)} ({_num(figures['rss_mib_max'], 1)}) | "
            f"{_num(figures['rss_slope_mib_per_min'], 3)} MiB/min | "
            f"{_num(figures['fds_first'])} → {_num(figures['fds_last'])} "
            f"({_num(figures['fds_max'])}) | {_num(figures['fd_other_baseline'])} → "
            f"{_num(figures['fd_other_end'])} | "
            f"{_num(figures['redis_sockets_max'])} / "
            f"{_num(figures['postgres_sockets_max'])} | "
            f"{_num(scan.get('error_lines'))} "
            f"({_num(scan.get('error_lines_in_window'))}) / "
            f"{_num(scan.get('tracebacks'))} |"
        )
    redis = resources["redis"]
    postgres = resources["postgres"]
    lines += [
        "",
        "Redis clients: highest before the restart "
        f"{_num(redis['before_restart_max'])}, "
        f"highest {_num(redis['max'])}, at the end {_num(redis['end'])}. "
        f"PostgreSQL connections to the app database: highest "
        f"{_num(postgres['max'])}, at the end {_num(postgres['end'])} "
        "(all client backends, the soak's own reads excepted: highest "
        f"{_num(postgres.get('all_client_backends_max'))}).",
        "",
    ]
    if document["failures"]:
        lines += ["Failed:", ""]
        lines += [f"- {line}" for line in document["failures"]]
        lines.append("")
    return "\n".join(lines)
