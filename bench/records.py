"""Run records: the generator's raw counters turned into the JSON shape.

Every record has the issue's keys (``scenario``, ``target``, ``server``,
``instances``, ``subscribers``, ``rate_per_s``, ``offered_per_s``,
``deliveries_per_s``, ``p50_ms``, ``p95_ms``, ``p99_ms``, ``lost``,
``duplicates``, ``cpu_us_per_delivery``), ``None`` where a scenario has no
such figure, plus scenario fields.
"""

from __future__ import annotations

from typing import Any

from bench import config

COMMON_KEYS = (
    "subscribers",
    "rate_per_s",
    "offered_per_s",
    "deliveries_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "lost",
    "duplicates",
    "cpu_us_per_delivery",
)


def _cpu_rates(cpu: dict[str, Any]) -> dict[str, float | None]:
    """Cores used over the window by the servers, Redis, generator, others."""
    start, end = cpu.get("t0"), cpu.get("t1")
    if not start or not end:
        return {}
    elapsed = end["at"] - start["at"]
    if elapsed <= 0:
        return {}
    servers = 0.0
    for pid, seconds in end["servers"].items():
        before = start["servers"].get(pid)
        if seconds is not None and before is not None:
            servers += seconds - before
    redis = _rate(start, end, "redis", elapsed)
    database = _rate(start, end, "database", elapsed)
    generator = (end["generator"] - start["generator"]) / elapsed
    machine = (end["machine_busy"] - start["machine_busy"]) / elapsed
    other = machine - servers / elapsed - (redis or 0.0) - (database or 0.0)
    return {
        "servers": servers / elapsed,
        "redis": redis,
        "database": database,
        "generator": generator,
        "other": max(0.0, other - generator),
    }


def _rate(
    start: dict[str, Any], end: dict[str, Any], key: str, elapsed: float
) -> float | None:
    if start.get(key) is None or end.get(key) is None:
        return None
    return (end[key] - start[key]) / elapsed


def _pct(cores: float | None) -> float | None:
    return None if cores is None else round(cores * 100, 1)


def _us_per(cores: float | None, per_second: float) -> float | None:
    if cores is None or per_second <= 0:
        return None
    return round(cores / per_second * 1e6, 1)


def _ms_per(cores: float | None, per_second: float) -> float | None:
    if cores is None or per_second <= 0:
        return None
    return round(cores / per_second * 1e3, 2)


def delivery_record(
    base: dict[str, Any], result: dict[str, Any], *, rate: float, offered: float
) -> dict[str, Any]:
    """A record for a step that sends messages and counts deliveries."""
    window = result["window_seconds"]
    per_second = result["window_deliveries"] / window
    messages = result["sent_window"] / window
    cores = _cpu_rates(result["cpu"])
    delivered_fraction = per_second / offered if offered else None
    return {
        **base,
        "subscribers": result["subscribers"],
        "rate_per_s": round(rate, 2),
        "offered_per_s": round(offered, 1),
        "deliveries_per_s": round(per_second, 1),
        "p50_ms": result["p50_ms"],
        "p95_ms": result["p95_ms"],
        "p99_ms": result["p99_ms"],
        "lost": result["lost"],
        "duplicates": result["duplicates"],
        "cpu_us_per_delivery": _us_per(cores.get("servers"), per_second),
        "max_ms": result["max_ms"],
        "delivered_fraction": (
            None if delivered_fraction is None else round(delivered_fraction, 3)
        ),
        "kept_up": (
            delivered_fraction is not None
            and delivered_fraction >= config.KEEP_UP_FRACTION
        ),
        "ack_p50_ms": result["ack_p50_ms"],
        "ack_p95_ms": result["ack_p95_ms"],
        "ack_p99_ms": result["ack_p99_ms"],
        "messages_in_window": result["sent_window"],
        "server_cpu_pct": _pct(cores.get("servers")),
        "redis_cpu_pct": _pct(cores.get("redis")),
        "redis_cpu_us_per_delivery": _us_per(cores.get("redis"), per_second),
        "database_cpu_pct": _pct(cores.get("database")),
        "database_cpu_us_per_delivery": _us_per(cores.get("database"), per_second),
        "server_cpu_ms_per_message": _ms_per(cores.get("servers"), messages),
        "database_cpu_ms_per_message": _ms_per(cores.get("database"), messages),
        "generator_cpu_pct": _pct(cores.get("generator")),
        "other_cpu_pct": _pct(cores.get("other")),
        "max_send_lag_ms": result["max_send_lag_ms"],
        "open_after": result["open_after"],
        "stale": result["stale"],
        "errors": result["errors"],
        "settled": result["settled"],
    }


def idle_record(
    base: dict[str, Any],
    *,
    connections: int,
    attempted: int,
    measured: int,
    rss_before: int,
    rss_after: int,
    connect_seconds: float,
    errors: dict[str, int],
    close_codes: dict[str, int],
) -> dict[str, Any]:
    """A record for the idle scenario: memory per connection, all kept open."""
    per_conn = (rss_after - rss_before) / 1024 / measured if measured else None
    return {
        **base,
        "instances": 1,
        **dict.fromkeys(COMMON_KEYS),
        "subscribers": connections,
        "connections": connections,
        "attempted": attempted,
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_kib_per_conn": None if per_conn is None else round(per_conn, 1),
        "connects_per_s": round(measured / connect_seconds, 1)
        if connect_seconds
        else None,
        "errors": errors,
        "close_codes": close_codes,
    }
