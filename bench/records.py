"""Run records: the generator's raw counters turned into the JSON shape.

Every record has the issue's keys (``scenario``, ``target``, ``server``,
``instances``, ``subscribers``, ``rate_per_s``, ``offered_per_s``,
``deliveries_per_s``, ``p50_ms``, ``p95_ms``, ``p99_ms``, ``lost``,
``duplicates``, ``cpu_us_per_delivery``), ``None`` where a scenario has no
such figure, plus scenario fields.
"""

from __future__ import annotations

import bisect
import math
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
        # Sends of the window never acknowledged: the ack percentiles cannot
        # see them, so the send target counts them on their own.
        "unacked": result.get("unacked_window", 0),
        "misrouted": result.get("misrouted", 0),
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


def handshake_record(
    base: dict[str, Any],
    *,
    connections: int,
    attempted: int,
    open_after: int,
    connect_seconds: float,
    server_cpu_seconds: float,
    replayed: int,
    replay_mismatches: int,
    errors: dict[str, int],
    close_codes: dict[str, int],
) -> dict[str, Any]:
    """A record for the handshake scenario: handshakes/s on one instance.

    ``server_cpu_ms_per_handshake`` is instance 0's CPU over the whole
    connect call per connection made; ``replayed`` is how many stored
    messages each connection asked for, ``replay_mismatches`` how many
    connections got another number of them before their greeting ended.
    """
    per_second = connections / connect_seconds if connect_seconds else None
    cpu_ms = server_cpu_seconds * 1e3 / connections if connections else None
    return {
        **base,
        "instances": 1,
        **dict.fromkeys(COMMON_KEYS),
        "subscribers": connections,
        "connections": connections,
        "attempted": attempted,
        "open_after": open_after,
        "connect_seconds": round(connect_seconds, 2),
        "handshakes_per_s": None if per_second is None else round(per_second, 1),
        "server_cpu_ms_per_handshake": None if cpu_ms is None else round(cpu_ms, 2),
        "replayed": replayed,
        "replay_mismatches": replay_mismatches,
        "errors": errors,
        "close_codes": close_codes,
    }


def storm_record(base: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A record for the storm: movers resumed, losses, stayers' latency.

    Latency figures are the stayers', for messages sent in the storm window
    (SIGTERM until every mover resumed, plus ``STORM_AFTER_SECONDS``). CPU is
    over the same window: ``server_cpu_pct`` is instance A's, and
    ``other_cpu_pct`` includes B's own shutdown.
    """
    latency, before = result["latency"], result["latency_before"]
    cores = _cpu_rates(result["cpu"])
    offsets = result["resumed_offsets"]
    return {
        **base,
        **dict.fromkeys(COMMON_KEYS),
        "subscribers": result["stayers"] + result["movers"],
        "rate_per_s": config.STORM_RATE,
        "p50_ms": latency["p50_ms"],
        "p95_ms": latency["p95_ms"],
        "p99_ms": latency["p99_ms"],
        "max_ms": latency["max_ms"],
        "lost": result["lost_stayers"] + result["lost_movers"],
        "duplicates": result["duplicates_stayers"] + result["duplicates_movers"],
        "stayers": result["stayers"],
        "movers": result["movers"],
        "resumed": result["resumed"],
        "all_resumed_seconds": result["all_resumed_seconds"],
        "half_resumed_seconds": _nth(offsets, result["movers"] / 2),
        "resumed_curve": resume_curve(offsets, result["window_seconds"]),
        "give_up_seconds": config.STORM_GIVE_UP_SECONDS,
        "window_seconds": result["window_seconds"],
        "published": result["published"],
        "unacked": result["unacked"],
        "first_seq": result["first_seq"],
        "last_seq": result["last_seq"],
        "lost_stayers": result["lost_stayers"],
        "lost_movers": result["lost_movers"],
        "lost_unresumed_movers": result["lost_unresumed_movers"],
        "duplicates_stayers": result["duplicates_stayers"],
        "duplicates_movers": result["duplicates_movers"],
        "handshake_attempts": result["attempts"],
        "stayer_reconnects": result["stayer_reconnects"],
        "refusals": result["refusals"],
        # What the refusals named (4503's retry_window_ms, 4429's
        # retry_after_ms), before the client's jitter.
        "refusal_hint_p50_ms": result["refusal_hints"]["p50_ms"],
        "refusal_hint_max_ms": result["refusal_hints"]["max_ms"],
        # Refusals that named no time (a close reason lost on the way): these
        # backed off with full jitter.
        "refusals_without_hint": result["refusals_without_hint"],
        "failures": result["failures"],
        "b_close_codes": result["b_close_codes"],
        "b_close_reasons": result["b_close_reasons"],
        "b_closed_first_s": result["b_closed_first_s"],
        "b_closed_last_s": result["b_closed_last_s"],
        "later_closes": result["later_closes"],
        "before_p50_ms": before["p50_ms"],
        "before_p99_ms": before["p99_ms"],
        "latency_buckets": result["latency_buckets"],
        # How late the generator's own loop ran (its worst, and per second):
        # a stayer's latency includes it.
        "generator_max_lag_ms": result["generator_max_lag_ms"],
        "generator_lag_buckets": result["generator_lag_buckets"],
        # The publisher's send -> ack on A, in the same window: the store.
        "ack_p50_ms": result["ack_latency"]["ack_p50_ms"],
        "ack_p99_ms": result["ack_latency"]["ack_p99_ms"],
        "server_cpu_pct": _pct(cores.get("servers")),
        "redis_cpu_pct": _pct(cores.get("redis")),
        "database_cpu_pct": _pct(cores.get("database")),
        "generator_cpu_pct": _pct(cores.get("generator")),
        "other_cpu_pct": _pct(cores.get("other")),
        "max_send_lag_ms": result["max_send_lag_ms"],
        "errors": result["errors"],
    }


def resume_curve(offsets: list[float], until: float) -> list[list[float]]:
    """``[seconds after SIGTERM, movers resumed by then]`` every half second."""
    step = config.STORM_CURVE_STEP_SECONDS
    points = math.ceil(max(until, offsets[-1] if offsets else 0.0) / step)
    return [
        [round(i * step, 2), bisect.bisect_right(offsets, i * step)]
        for i in range(points + 1)
    ]


def _nth(offsets: list[float], count: float) -> float | None:
    """When the ``count``-th mover resumed; None if fewer did."""
    index = math.ceil(count) - 1
    if index < 0 or index >= len(offsets):
        return None
    return offsets[index]
