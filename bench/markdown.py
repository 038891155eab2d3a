"""Markdown tables of a results file, for docs/performance.md.

python -m bench --markdown [bench/results/latest.json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report
from bench.report import _fmt

Run = dict[str, Any]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(
    headers: list[str], rows: list[list[str]], *, text_columns: int = 1
) -> list[str]:
    """A Markdown table; the first ``text_columns`` align left, others right."""
    align = ["---"] * text_columns + ["---:"] * (len(headers) - text_columns)
    return [_row(headers), _row(align), *(_row(r) for r in rows), ""]


def deliveries(runs: list[Run], scenario: str) -> list[str]:
    headers, rows = report.delivery_cells(runs, scenario, markdown=True)
    return _table(headers, rows) if rows else []


def idle(runs: list[Run]) -> list[str]:
    headers, rows = report.idle_cells(runs, markdown=True)
    return _table(headers, rows) if rows else []


def handshake(runs: list[Run]) -> list[str]:
    headers, rows = report.handshake_cells(runs, markdown=True)
    return _table(headers, rows) if rows else []


def storm(runs: list[Run]) -> list[str]:
    headers, rows = report.storm_cells(runs, markdown=True)
    return _table(headers, rows) if rows else []


def checks(runs: list[Run]) -> list[str]:
    rows = [
        [item["status"], item["target"], _fmt(item["value"], 2), item["goal"]]
        for item in report.checks(runs)
    ]
    return _table(["status", "target", "measured", "goal"], rows, text_columns=4)


def ratios(runs: list[Run]) -> list[str]:
    rows = [
        [
            f"{item['scenario']} {item['subscribers']} @ {item['rate_per_s']:g}/s",
            f"{item['a']} / {item['b']}",
            _fmt(item["deliveries"], 2),
            _fmt(item["cpu_per_delivery"], 2),
            _fmt(item["p99"], 2),
        ]
        for item in report.ratios(runs)
    ]
    headers = ["load", "a / b", "deliveries/s", "CPU per delivery", "p99"]
    return _table(headers, rows, text_columns=2)


def handshake_ratios(runs: list[Run]) -> list[str]:
    rows = [
        [
            f"{item['a']} / {item['b']}",
            _fmt(item["handshakes"], 2),
            _fmt(item["cpu_per_handshake"], 2),
        ]
        for item in report.handshake_ratios(runs)
    ]
    headers = ["handshake, one instance: a / b", "handshakes/s", "CPU per handshake"]
    return _table(headers, rows) if rows else []


def render(path: Path) -> str:
    """Every table of a results file, as Markdown."""
    document = json.loads(path.read_text())
    runs = document["runs"]
    parts: list[str] = []
    for scenario in ("fanout", "rooms", "send"):
        section = deliveries(runs, scenario)
        if section:
            parts += [f"#### {scenario}", "", *section]
    if idle(runs):
        parts += ["#### idle", "", *idle(runs)]
    if handshake(runs):
        parts += ["#### handshake", "", *handshake(runs)]
    if storm(runs):
        parts += ["#### storm", "", *storm(runs)]
    # Ratios and targets are recomputed, so an older file reads the same way.
    parts += ["#### ratios (same run)", "", *ratios(runs), *handshake_ratios(runs)]
    parts += ["#### targets", "", *checks(runs)]
    machine = document.get("machine", {})
    parts.append(
        f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, "
        f"Python {machine.get('python')}; load average at start "
        f"{machine.get('load_average_at_start')}, at end "
        f"{machine.get('load_average_at_end')}; wall time "
        f"{document.get('wall_seconds')} s; code {document.get('code')}."
    )
    return "\n".join(parts) + "\n"
