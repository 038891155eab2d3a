"""Small pure helpers for summarising samples (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(
    seconds: Sequence[float], prefix: str = ""
) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds, keys ``{prefix}p50_ms`` and so on."""
    ordered = sorted(seconds)
    summary: dict[str, float | None] = {}
    for name, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        value = percentile(ordered, fraction)
        summary[f"{prefix}{name}_ms"] = None if value is None else round(value * 1e3, 2)
    return summary


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded to 2 places; None if undefined."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)
