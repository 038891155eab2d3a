"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import config
from bench.report import label

Run = dict[str, Any]


def _series(runs: list[Run], scenario: str) -> dict[str, list[Run]]:
    """Points per stack, without the trade-off variants (see ``tradeoffs``)."""
    grouped: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if (
            run["scenario"] == scenario
            and not run.get("variant")
            and run.get("deliveries_per_s") is not None
        ):
            grouped[label(run)].append(run)
    for points in grouped.values():
        points.sort(key=lambda r: r["offered_per_s"])
    return grouped


def fanout(runs: list[Run], directory: Path) -> list[Path]:
    """Deliveries/s and latency against offered deliveries/s, per target."""
    grouped = _series(runs, "fanout")
    if not grouped:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    top = max(r["offered_per_s"] for points in grouped.values() for r in points)
    ax.plot([0, top], [0, top], color="0.7", linestyle=":", label="offered (ideal)")
    for name, points in grouped.items():
        ax.plot(
            [r["offered_per_s"] for r in points],
            [r["deliveries_per_s"] for r in points],
            marker="o",
            label=name,
        )
    ax.set_xlabel("offered deliveries/s (subscribers x messages/s)")
    ax.set_ylabel("deliveries/s in the measured window")
    ax.set_title("fanout: one room, 2 instances")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, directory / "fanout_throughput.png"))

    fig, ax = plt.subplots(figsize=(8, 5))
    _p99_and_p50(ax, grouped, "offered_per_s", "", config.FANOUT_500_P99_MS,
                 "p99 target at 500")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("offered deliveries/s")
    ax.set_ylabel("end-to-end latency, ms (log)")
    ax.set_title("fanout latency: p99 (solid), p50 (dashed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    written.append(_save(fig, directory / "fanout_latency.png"))
    return written


def _p99_and_p50(
    ax: Any,
    grouped: dict[str, list[Run]],
    x: str,
    prefix: str,
    target: float,
    target_label: str,
) -> None:
    """p99 (solid) and p50 (dashed, same colour) per series, and the target."""
    kind = prefix.replace("_", " ")
    for name, points in grouped.items():
        xs = [r[x] for r in points]
        line = ax.plot(
            xs,
            [r[f"{prefix}p99_ms"] or float("nan") for r in points],
            marker="o",
            label=f"{name} {kind}p99",
        )
        ax.plot(
            xs,
            [r[f"{prefix}p50_ms"] or float("nan") for r in points],
            marker=".",
            linestyle="--",
            color=line[0].get_color(),
            label=f"{name} {kind}p50",
        )
    ax.axhline(target, color="0.5", linestyle=":", label=target_label)


def send(runs: list[Run], directory: Path) -> list[Path]:
    """Ack latency against the total send rate into one room."""
    grouped = _series(runs, "send")
    if not grouped:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    _p99_and_p50(ax, grouped, "rate_per_s", "ack_", config.SEND_ACK_P99_MS_MAX,
                 "ack p99 target")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("messages/s into one room (senders on both instances)")
    ax.set_ylabel("send -> ack, ms (log)")
    ax.set_title("send: stored in PostgreSQL, then acked")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return [_save(fig, directory / "send_ack_latency.png")]


def idle(runs: list[Run], directory: Path) -> list[Path]:
    """RSS per idle connection, per target."""
    chosen = [r for r in runs if r["scenario"] == "idle" and r["rss_kib_per_conn"]]
    if not chosen:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [f"{label(r)}\n{r['connections']:,} conns" for r in chosen]
    values = [r["rss_kib_per_conn"] for r in chosen]
    bars = ax.bar(names, values, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("KiB of server RSS per idle connection")
    ax.set_title("idle: one instance")
    ax.grid(alpha=0.3, axis="y")
    return [_save(fig, directory / "idle_memory.png")]


def tradeoffs(runs: list[Run], directory: Path) -> list[Path]:
    """uvicorn as run vs. its variants, at the variants' load points."""
    pairs = []
    for variant in ("permessage-deflate", "asyncio loop"):
        for run in runs:
            if run["scenario"] != "fanout" or run.get("variant") != variant:
                continue
            default = next(
                (
                    r
                    for r in runs
                    if r["scenario"] == "fanout"
                    and r["target"] == run["target"]
                    and r["server"] == run["server"]
                    and not r.get("variant")
                    and r.get("planned_subscribers") == run.get("planned_subscribers")
                    and r["rate_per_s"] == run["rate_per_s"]
                ),
                None,
            )
            if default is not None:
                pairs.append((variant, default, run))
    if not pairs:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = []
    defaults_cpu, variants_cpu, defaults_pct, variants_pct = [], [], [], []
    for variant, default, run in pairs:
        names.append(f"{variant}\n{run['planned_subscribers']} subs")
        defaults_cpu.append(default["cpu_us_per_delivery"] or 0)
        variants_cpu.append(run["cpu_us_per_delivery"] or 0)
        defaults_pct.append((default["delivered_fraction"] or 0) * 100)
        variants_pct.append((run["delivered_fraction"] or 0) * 100)
    positions = range(len(pairs))
    for ax, base, other, title in (
        (axes[0], defaults_cpu, variants_cpu, "server CPU µs per delivery"),
        (axes[1], defaults_pct, variants_pct, "% of offered delivered"),
    ):
        left = [p - 0.2 for p in positions]
        right = [p + 0.2 for p in positions]
        ax.bar_label(
            ax.bar(left, base, width=0.4, label="default (uvloop, uncompressed)"),
            fmt="%.0f",
        )
        ax.bar_label(ax.bar(right, other, width=0.4, label="variant"), fmt="%.0f")
        ax.set_xticks(list(positions), names, fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle("switchboard/uvicorn: permessage-deflate clients, asyncio loop")
    return [_save(fig, directory / "tradeoffs.png")]


def storm(runs: list[Run], directory: Path) -> list[Path]:
    """Movers resumed, and stayers' p99 per second, against time from SIGTERM."""
    chosen = [r for r in runs if r["scenario"] == "storm"]
    if not chosen:
        return []
    fig, (resumed, latency) = plt.subplots(1, 2, figsize=(11, 4.5))
    for run in chosen:
        curve = run["resumed_curve"]
        resumed.plot(
            [t for t, _ in curve],
            [n for _, n in curve],
            marker=".",
            label=f"{label(run)} ({run['resumed']:,}/{run['planned_movers']:,})",
        )
        buckets = [b for b in run["latency_buckets"] if b[3] is not None]
        latency.plot(
            [b[0] + 0.5 for b in buckets],
            [b[3] for b in buckets],
            marker=".",
            label=label(run),
        )
    resumed.axvline(config.STORM_RESUME_SECONDS_MAX, color="0.5", linestyle=":",
                    label="target: all resumed")  # fmt: skip
    resumed.set_xlabel("seconds after SIGTERM to instance B")
    resumed.set_ylabel("movers resumed on A")
    resumed.set_title("movers resumed (welcome and replay in)")
    latency.axvline(0, color="0.7", linestyle="--", label="SIGTERM")
    latency.axhline(config.STORM_STAYER_P99_MS_MAX, color="0.5", linestyle=":",
                    label="p99 target")  # fmt: skip
    latency.set_yscale("log")
    latency.set_xlabel("seconds after SIGTERM (by send time, 1 s buckets)")
    latency.set_ylabel("stayers' p99, ms (log)")
    latency.set_title("stayers on A: publish -> receive p99")
    for ax in (resumed, latency):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("storm: a deploy SIGTERMs B; its clients resume on A")
    return [_save(fig, directory / "storm.png")]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_plots(runs: list[Run], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return (
        fanout(runs, directory)
        + tradeoffs(runs, directory)
        + send(runs, directory)
        + idle(runs, directory)
        + storm(runs, directory)
    )
