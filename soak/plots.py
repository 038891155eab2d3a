"""The soak's plot (matplotlib, Agg backend: no display needed).

Four panels against minutes of traffic: RSS per instance with the fit over
the last half, descriptors and client sockets per instance, Redis clients,
PostgreSQL connections; the Redis outage is shaded and member removals are
marked in each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MIB = 1024 * 1024


def plot(document: dict[str, Any], path: Path) -> Path:
    samples = document["samples"]
    soak = document["soak"]
    duration = soak["duration_s"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharex=True)
    rss_ax, fds_ax, redis_ax, pg_ax = axes.flat
    names = sorted(samples[-1]["instances"]) if samples else []
    for name in names:
        rows = [
            (s["t"] / 60, s["instances"][name])
            for s in samples
            if s["instances"].get(name, {}).get("alive")
        ]
        xs = [t for t, _ in rows]
        line = rss_ax.plot(xs, [f["rss"] / MIB for _, f in rows], label=name)
        colour = line[0].get_color()
        slope = document["resources"]["instances"][name]["rss_slope_mib_per_min"]
        half, end = duration / 120, duration / 60  # minutes
        fit = [(t, f["rss"] / MIB) for t, f in rows if half <= t <= end]
        if slope is not None and len(fit) >= 2:
            mean_t = sum(t for t, _ in fit) / len(fit)
            mean_v = sum(v for _, v in fit) / len(fit)
            ends = [fit[0][0], fit[-1][0]]
            rss_ax.plot(
                ends,
                [mean_v + slope * (t - mean_t) for t in ends],
                color=colour,
                linestyle="--",
                linewidth=1,
                label=f"{name} fit: {slope:+.2f} MiB/min",
            )
        fds_ax.plot(xs, [f["fds"] for _, f in rows], color=colour, label=f"{name} fds")
        fds_ax.plot(
            xs,
            [f["client_sockets"] for _, f in rows],
            color=colour,
            linestyle=":",
            label=f"{name} client sockets",
        )
    redis = [(s["t"] / 60, s["redis_clients"]) for s in samples]
    redis_ax.plot(
        [t for t, v in redis if v is not None],
        [v for _, v in redis if v is not None],
        marker=".",
        markersize=3,
        color="tab:red",
    )
    pg = [(s["t"] / 60, s.get("pg_app_connections")) for s in samples]
    pg_ax.plot(
        [t for t, v in pg if v is not None],
        [v for _, v in pg if v is not None],
        color="tab:purple",
        label="app database",
    )
    restart = soak["redis_restart"]
    for ax in axes.flat:
        if "stopping_at" in restart and "started_at" in restart:
            ax.axvspan(
                restart["stopping_at"] / 60,
                restart["started_at"] / 60,
                color="tab:red",
                alpha=0.15,
                label="Redis down" if ax is rss_ax else None,
            )
        for number, removal in enumerate(soak["removals"]):
            ax.axvline(
                removal["removed_at"] / 60,
                color="0.6",
                linestyle=":",
                linewidth=0.8,
                label="member removed" if ax is rss_ax and number == 0 else None,
            )
        ax.axvline(duration / 60, color="0.3", linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    rss_ax.set_ylabel("RSS, MiB")
    rss_ax.set_title("memory per instance (dashed: fit over the last half)")
    rss_ax.legend(fontsize=7)
    fds_ax.set_ylabel("count")
    fds_ax.set_title("open descriptors and client sockets per instance")
    fds_ax.legend(fontsize=7)
    redis_ax.set_ylabel("connected_clients")
    redis_ax.set_title("Redis clients (none while Redis is down)")
    pg_ax.set_ylabel("connections")
    pg_ax.set_title("PostgreSQL connections (pg_stat_activity)")
    for ax in (redis_ax, pg_ax):
        ax.set_xlabel("minutes of traffic (dashed line: end of traffic)")
    verdict = "PASS" if document["passed"] else "FAIL"
    fig.suptitle(
        f"soak: {soak['minutes']:g} min, {soak['clients']} clients, "
        f"{soak['instances']} instances, Redis restarted once: {verdict}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
