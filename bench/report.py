"""The report: a table per scenario, same-run ratios, and the issue's targets.

Checks print PASS or FAIL and never change the exit status: only a broken
harness does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bench import config
from bench.stats import ratio

Run = dict[str, Any]


def label(run: Run) -> str:
    variant = f" ({run['variant']})" if run.get("variant") else ""
    return f"{run['target']}/{run['server']}{variant}"


def find(
    runs: Iterable[Run],
    scenario: str,
    target: str,
    server: str,
    *,
    variant: str = "",
    subscribers: int | None = None,
    rate: float | None = None,
) -> Run | None:
    """The first run matching; ``subscribers`` and ``rate`` when given."""
    for run in runs:
        if (
            run["scenario"] == scenario
            and run["target"] == target
            and run["server"] == server
            and run.get("variant", "") == variant
            and (subscribers is None or planned(run) == subscribers)
            and (rate is None or run["rate_per_s"] == rate)
        ):
            return run
    return None


def planned(run: Run) -> int:
    """The subscriber count a step asked for (some may have failed to join)."""
    return run.get("planned_subscribers") or run["subscribers"]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for row in rows:
        out.append(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return out


def _percent(run: Run, sign: str = "") -> str:
    fraction = run.get("delivered_fraction")
    return "-" if fraction is None else f"{fraction * 100:.0f}{sign}"


Column = tuple[str, str, Callable[[Run], str]]  # short header, long header, cell


def delivery_columns(scenario: str, *, markdown: bool = False) -> list[Column]:
    """The columns of a delivery scenario's table, for stdout or Markdown."""
    columns: list[Column] = [
        ("target/server", "target/server", label),
        ("subs", "subs", lambda r: _fmt(r["subscribers"])),
        ("msg/s", "msg/s", lambda r: _fmt(r["rate_per_s"], 0)),
        ("offered/s", "offered/s", lambda r: _fmt(r["offered_per_s"], 0)),
        ("deliv/s", "delivered/s", lambda r: _fmt(r["deliveries_per_s"], 0)),
        ("%", "%", lambda r: _percent(r, "%" if markdown else "")),
        ("p50 ms", "p50 ms", lambda r: _fmt(r["p50_ms"])),
        ("p95 ms", "p95 ms", lambda r: _fmt(r["p95_ms"])),
        ("p99 ms", "p99 ms", lambda r: _fmt(r["p99_ms"])),
        ("lost", "lost", lambda r: _fmt(r["lost"])),
        ("dup", "dup", lambda r: _fmt(r["duplicates"])),
    ]
    if scenario == "send":
        columns += [
            ("ack p50", "ack p50 ms", lambda r: _fmt(r.get("ack_p50_ms"))),
            ("ack p99", "ack p99 ms", lambda r: _fmt(r.get("ack_p99_ms"))),
            ("stored/s", "stored/s", lambda r: _fmt(r.get("stored_per_s"))),
        ]
    if scenario == "rooms":
        columns += [
            ("rooms", "rooms", lambda r: _fmt(r.get("rooms"))),
            (
                "redis conns/proc",
                "Redis conns per process",
                lambda r: "/".join(
                    str(n) for n in r.get("redis_connections_per_process", [])
                ),
            ),
        ]
    columns += [
        (
            "cpu µs/d",
            "server CPU µs/delivery",
            lambda r: _fmt(r["cpu_us_per_delivery"]),
        ),
        ("srv %", "server CPU %", lambda r: _fmt(r.get("server_cpu_pct"), 0)),
        ("db %", "PostgreSQL CPU %", lambda r: _fmt(r.get("database_cpu_pct"), 0)),
        ("other %", "other CPU %", lambda r: _fmt(r.get("other_cpu_pct"), 0)),
    ]
    return columns


def delivery_cells(
    runs: list[Run], scenario: str, *, markdown: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a delivery scenario's table; empty without runs."""
    chosen = [r for r in runs if r["scenario"] == scenario]
    if not chosen:
        return [], []
    columns = delivery_columns(scenario, markdown=markdown)
    headers = [long if markdown else short for short, long, _ in columns]
    return headers, [[cell(run) for _, _, cell in columns] for run in chosen]


def delivery_table(runs: list[Run], scenario: str) -> list[str]:
    headers, rows = delivery_cells(runs, scenario)
    if not rows:
        return []
    return [f"[{scenario}]", *_table(headers, rows), ""]


def idle_cells(
    runs: list[Run], *, markdown: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the idle table; empty without idle runs."""
    chosen = [r for r in runs if r["scenario"] == "idle"]
    if not chosen:
        return [], []
    if markdown:
        headers = ["target/server (one instance)", "open", "attempted",
                   "RSS before MiB", "RSS after MiB", "KiB per connection",
                   "connects/s"]  # fmt: skip
    else:
        headers = ["target/server", "open", "of", "RSS before MiB", "after MiB",
                   "KiB/conn", "connects/s"]  # fmt: skip
    rows = [
        [
            label(run),
            _fmt(run["connections"]),
            _fmt(run["attempted"]),
            _fmt(run["rss_before_mib"]),
            _fmt(run["rss_after_mib"]),
            _fmt(run["rss_kib_per_conn"]),
            _fmt(run["connects_per_s"], 0),
        ]
        for run in chosen
    ]
    return headers, rows


def idle_table(runs: list[Run]) -> list[str]:
    headers, rows = idle_cells(runs)
    if not rows:
        return []
    return ["[idle] (one instance)", *_table(headers, rows), ""]


def handshake_cells(
    runs: list[Run], *, markdown: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the handshake table; empty without handshake runs."""
    chosen = [r for r in runs if r["scenario"] == "handshake"]
    if not chosen:
        return [], []
    columns: list[Column] = [
        ("target/server", "target/server (one instance)", label),
        ("done", "handshakes", lambda r: _fmt(r["connections"])),
        ("of", "attempted", lambda r: _fmt(r["attempted"])),
        ("per s", "handshakes/s", lambda r: _fmt(r["handshakes_per_s"], 0)),
        (
            "cpu ms",
            "server CPU ms/handshake",
            lambda r: _fmt(r["server_cpu_ms_per_handshake"], 2),
        ),
        ("replay", "replayed each", lambda r: _fmt(r["replayed"])),
        ("off", "replays not as asked", lambda r: _fmt(r["replay_mismatches"])),
        ("errors", "errors", lambda r: _codes(r["errors"])),
        ("closes", "close codes", lambda r: _codes(r["close_codes"])),
    ]
    headers = [long if markdown else short for short, long, _ in columns]
    return headers, [[cell(run) for _, _, cell in columns] for run in chosen]


def handshake_table(runs: list[Run]) -> list[str]:
    headers, rows = handshake_cells(runs)
    if not rows:
        return []
    title = "[handshake] (one instance; Switchboard: token, private room, replay)"
    return [title, *_table(headers, rows), ""]


def _codes(counts: dict[str, int]) -> str:
    """``{"4503": 12, "4429": 1}`` as ``4503:12 4429:1``; ``-`` when empty."""
    return " ".join(f"{code}:{n}" for code, n in sorted(counts.items())) or "-"


def _resumed(run: Run) -> str:
    return f"{run['resumed']:,}/{run['planned_movers']:,}"


def _hints(run: Run) -> str:
    if run.get("refusal_hint_p50_ms") is None:
        return "-"
    return f"{run['refusal_hint_p50_ms']:,.0f}/{run['refusal_hint_max_ms']:,.0f}"


def storm_cells(
    runs: list[Run], *, markdown: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the storm table; empty without storm runs."""
    chosen = [r for r in runs if r["scenario"] == "storm"]
    if not chosen:
        return [], []
    columns: list[Column] = [
        ("target/server", "target/server", label),
        ("stayers", "stayers", lambda r: _fmt(r["stayers"])),
        ("resumed", "movers resumed", _resumed),
        ("half s", "half resumed s", lambda r: _fmt(r["half_resumed_seconds"], 2)),
        ("all s", "all resumed s", lambda r: _fmt(r["all_resumed_seconds"], 2)),
        ("B closes", "B's close codes", lambda r: _codes(r["b_close_codes"])),
        ("attempts", "handshakes", lambda r: _fmt(r["handshake_attempts"])),
        ("refused", "refused", lambda r: _codes(r["refusals"])),
        ("hint ms", "retry hint p50/max ms", _hints),
        ("failed", "other failures", lambda r: _fmt(sum(r["failures"].values()))),
        ("lost", "lost", lambda r: _fmt(r["lost"])),
        ("dup", "dup", lambda r: _fmt(r["duplicates"])),
        ("p50 ms", "stayers p50 ms", lambda r: _fmt(r["p50_ms"])),
        ("p99 ms", "stayers p99 ms", lambda r: _fmt(r["p99_ms"])),
        ("max ms", "stayers max ms", lambda r: _fmt(r["max_ms"])),
        ("A cpu %", "A CPU %", lambda r: _fmt(r["server_cpu_pct"], 0)),
        ("other %", "other CPU %", lambda r: _fmt(r["other_cpu_pct"], 0)),
    ]
    headers = [long if markdown else short for short, long, _ in columns]
    return headers, [[cell(run) for _, _, cell in columns] for run in chosen]


def storm_table(runs: list[Run]) -> list[str]:
    headers, rows = storm_cells(runs)
    if not rows:
        return []
    title = "[storm] (B gets SIGTERM; its movers resume on A; stayers' latency)"
    return [title, *_table(headers, rows), ""]


def tables(runs: list[Run]) -> str:
    lines: list[str] = []
    for scenario in ("fanout", "rooms", "send"):
        lines += delivery_table(runs, scenario)
    lines += idle_table(runs)
    lines += handshake_table(runs)
    lines += storm_table(runs)
    return "\n".join(lines)


# --- ratios -------------------------------------------------------------------

PAIRS = (
    (("switchboard", "daphne"), ("tutorial", "daphne")),
    (("switchboard", "daphne"), ("raw", "websockets")),
    (("switchboard", "uvicorn"), ("tutorial", "daphne")),
    (("switchboard", "uvicorn"), ("raw", "websockets")),
    (("switchboard", "uvicorn"), ("switchboard", "daphne")),
    (("tutorial", "daphne"), ("raw", "websockets")),
)


def ratios(runs: list[Run]) -> list[dict[str, Any]]:
    """Same-run ratios of deliveries/s and CPU per delivery, per load point."""
    points = sorted(
        {(r["scenario"], planned(r), r["rate_per_s"]) for r in runs
         if r["scenario"] in ("fanout", "rooms") and not r.get("variant")}
    )  # fmt: skip
    found = []
    for scenario, subscribers, rate in points:
        for (a_target, a_server), (b_target, b_server) in PAIRS:
            a = find(
                runs, scenario, a_target, a_server, subscribers=subscribers, rate=rate
            )
            b = find(
                runs, scenario, b_target, b_server, subscribers=subscribers, rate=rate
            )
            if a is None or b is None:
                continue
            found.append(
                {
                    "scenario": scenario,
                    "subscribers": subscribers,
                    "rate_per_s": rate,
                    "a": f"{a_target}/{a_server}",
                    "b": f"{b_target}/{b_server}",
                    "deliveries": ratio(a["deliveries_per_s"], b["deliveries_per_s"]),
                    "cpu_per_delivery": ratio(
                        a["cpu_us_per_delivery"], b["cpu_us_per_delivery"]
                    ),
                    "p99": ratio(a["p99_ms"], b["p99_ms"]),
                }
            )
    return found


def handshake_ratios(runs: list[Run]) -> list[dict[str, Any]]:
    """Same-run ratios of handshakes/s and server CPU per handshake."""
    found = []
    for (a_target, a_server), (b_target, b_server) in PAIRS:
        a = find(runs, "handshake", a_target, a_server)
        b = find(runs, "handshake", b_target, b_server)
        if a is None or b is None:
            continue
        found.append(
            {
                "a": f"{a_target}/{a_server}",
                "b": f"{b_target}/{b_server}",
                "handshakes": ratio(a["handshakes_per_s"], b["handshakes_per_s"]),
                "cpu_per_handshake": ratio(
                    a["server_cpu_ms_per_handshake"], b["server_cpu_ms_per_handshake"]
                ),
            }
        )
    return found


def ratio_lines(
    found: list[dict[str, Any]], handshakes: Iterable[dict[str, Any]] = ()
) -> str:
    lines = ["[ratios, same run: a / b]"]
    for item in found:
        lines.append(
            f"{item['scenario']} {item['subscribers']} subs "
            f"@ {item['rate_per_s']:g}/s: {item['a']} / {item['b']}: "
            f"deliveries x{_fmt(item['deliveries'], 2)}, "
            f"CPU per delivery x{_fmt(item['cpu_per_delivery'], 2)}, "
            f"p99 x{_fmt(item['p99'], 2)}"
        )
    for item in handshakes:
        lines.append(
            f"handshake, one instance: {item['a']} / {item['b']}: "
            f"handshakes/s x{_fmt(item['handshakes'], 2)}, "
            f"CPU per handshake x{_fmt(item['cpu_per_handshake'], 2)}"
        )
    return "\n".join(lines) + "\n"


# --- targets ------------------------------------------------------------------


def _check(name: str, value: Any, passed: bool | None, goal: str) -> dict[str, Any]:
    status = "n/a" if passed is None else ("PASS" if passed else "FAIL")
    return {"target": name, "goal": goal, "value": value, "status": status}


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def all_joined(run: Run | None) -> bool | None:
    """Every planned subscriber joined (a step that lost some measures a
    smaller room than it claims); None without the run."""
    return None if run is None else run["subscribers"] >= planned(run)


def _both(*results: bool | None) -> bool | None:
    """All of the results; None if any is unknown."""
    if any(result is None for result in results):
        return None
    return all(results)


def nothing_lost(run: Run | None) -> bool | None:
    """No (subscriber, message) pair lost and none sent to the wrong room."""
    if run is None:
        return None
    return run["lost"] == 0 and run.get("misrouted", 0) == 0


def checks(runs: list[Run]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on this run's records."""
    out = []
    d500 = find(runs, "fanout", "switchboard", "daphne", subscribers=500, rate=50)
    fraction = d500 and d500["delivered_fraction"]
    out.append(_check(
        "daphne fanout 500: keeps up (% of offered)",
        None if fraction is None else round(fraction * 100, 1),
        _both(_at_least(fraction, config.KEEP_UP_FRACTION), all_joined(d500)),
        f">= {config.KEEP_UP_FRACTION:.0%}, all joined",
    ))  # fmt: skip
    out.append(_check(
        "daphne fanout 500: p99",
        d500 and d500["p99_ms"],
        _at_most(d500 and d500["p99_ms"], config.FANOUT_500_P99_MS),
        f"<= {config.FANOUT_500_P99_MS:g} ms",
    ))  # fmt: skip
    out.append(_check(
        "daphne fanout 500: lost", d500 and d500["lost"],
        nothing_lost(d500), "0 (and none to another room)",
    ))  # fmt: skip
    out += _versus(
        runs, "daphne", 1000, config.VS_TUTORIAL_RATE, "tutorial", "daphne",
        config.VS_TUTORIAL_MIN,
    )  # fmt: skip
    out += _versus(
        runs, "daphne", 1000, 50, "raw", "websockets", config.DAPHNE_VS_RAW_MIN
    )
    d1000 = find(runs, "fanout", "switchboard", "daphne", subscribers=1000, rate=50)
    cpu = d1000 and d1000["cpu_us_per_delivery"]
    out.append(_check(
        "daphne fanout 1000: server CPU per delivery", cpu,
        _both(_at_most(cpu, config.CPU_US_PER_DELIVERY_MAX), all_joined(d1000)),
        f"<= {config.CPU_US_PER_DELIVERY_MAX:g} µs, all joined",
    ))  # fmt: skip
    for rate in (50, 100):
        out += _versus(
            runs, "uvicorn", 1000, rate, "raw", "websockets", config.UVICORN_VS_RAW_MIN
        )
    out.append(_saturation_check(runs))
    for server in ("daphne", "uvicorn"):
        out += _rooms_checks(runs, server)
    out.append(_stored_message_check(runs))
    idle = find(runs, "idle", "switchboard", "daphne")
    out.append(_check(
        "daphne idle: connections held open",
        idle and idle["connections"],
        None if idle is None else idle["connections"] >= 10_000,
        ">= 10,000",
    ))  # fmt: skip
    out.append(_check(
        "daphne idle: RSS per connection",
        idle and idle["rss_kib_per_conn"],
        _at_most(idle and idle["rss_kib_per_conn"], config.IDLE_KIB_PER_CONN_MAX),
        f"<= {config.IDLE_KIB_PER_CONN_MAX:g} KiB",
    ))  # fmt: skip
    for server in ("daphne", "uvicorn"):
        out.append(_handshake_check(runs, server))
    for server in ("daphne", "uvicorn"):
        send = find(runs, "send", "switchboard", server, rate=config.SEND_CHECK_RATE)
        # A send never acknowledged has no latency to rank: it fails the
        # target instead of leaving the percentile.
        unacked = None if send is None else send.get("unacked", 0)
        out.append(_check(
            f"{server} send {config.SEND_CHECK_RATE}/s: ack p99",
            send and (
                send["ack_p99_ms"] if not unacked
                else f"{_fmt(send['ack_p99_ms'], 2)}, {unacked} unacked"
            ),
            _both(
                _at_most(send and send["ack_p99_ms"], config.SEND_ACK_P99_MS_MAX),
                None if send is None else unacked == 0,
            ),
            f"<= {config.SEND_ACK_P99_MS_MAX:g} ms, every send acked",
        ))  # fmt: skip
    for server in ("daphne", "uvicorn"):
        out += _storm_checks(runs, server)
    return out


def _versus(
    runs: list[Run],
    server: str,
    subscribers: int,
    rate: int,
    b_target: str,
    b_server: str,
    minimum: float,
) -> list[dict[str, Any]]:
    a = find(runs, "fanout", "switchboard", server, subscribers=subscribers, rate=rate)
    b = find(runs, "fanout", b_target, b_server, subscribers=subscribers, rate=rate)
    value = ratio(a and a["deliveries_per_s"], b and b["deliveries_per_s"])
    return [
        _check(
            f"{server} fanout {subscribers} @ {rate}/s: deliveries vs {b_target}",
            value,
            _both(_at_least(value, minimum), all_joined(a), all_joined(b)),
            f">= {minimum:g} x, all joined",
        )
    ]


def _saturation_check(runs: list[Run]) -> dict[str, Any]:
    a = find(runs, "fanout", "switchboard", "daphne", subscribers=1000, rate=100)
    b = find(runs, "fanout", "raw", "websockets", subscribers=1000, rate=100)
    value = ratio(a and a["p99_ms"], b and b["p99_ms"])
    return _check(
        "daphne fanout 1000 @ 100/s: p99 vs raw",
        value,
        _both(
            _at_most(value, config.SATURATION_P99_VS_RAW_MAX),
            nothing_lost(a),
            all_joined(a),
            all_joined(b),
        ),
        f"<= {config.SATURATION_P99_VS_RAW_MAX:g} x, 0 lost, all joined",
    )


def _stored_message_check(runs: list[Run]) -> dict[str, Any]:
    # Both deliver each message to the same 5 subscribers: the ratio of CPU
    # per delivery is the ratio of CPU per message.
    a = find(runs, "rooms", "switchboard", "daphne")
    b = find(runs, "rooms", "tutorial", "daphne")
    value = ratio(a and a["cpu_us_per_delivery"], b and b["cpu_us_per_delivery"])
    return _check(
        "daphne rooms: server CPU per stored message vs tutorial "
        "(an aim: docs/performance.md)",
        value,
        _at_most(value, config.STORED_MESSAGE_CPU_VS_TUTORIAL_MAX),
        f"<= {config.STORED_MESSAGE_CPU_VS_TUTORIAL_MAX:g} x",
    )


def _handshake_check(runs: list[Run], server: str) -> dict[str, Any]:
    a = find(runs, "handshake", "switchboard", server)
    b = find(runs, "handshake", "tutorial", "daphne")
    value = ratio(a and a["handshakes_per_s"], b and b["handshakes_per_s"])
    return _check(
        f"{server} handshakes/s vs tutorial (an aim: docs/performance.md)",
        value,
        _at_least(value, config.HANDSHAKE_VS_TUTORIAL_MIN),
        f">= {config.HANDSHAKE_VS_TUTORIAL_MIN:g} x",
    )


def _rooms_checks(runs: list[Run], server: str) -> list[dict[str, Any]]:
    rooms = find(runs, "rooms", "switchboard", server)
    kept = None
    if rooms is not None:
        kept = bool(all_joined(rooms) and rooms["kept_up"] and nothing_lost(rooms))
    connections = rooms and max(rooms["redis_connections_per_process"], default=None)
    return [
        _check(
            f"{server} rooms: all joined, keeps up, 0 lost",
            rooms
            and f"{rooms['subscribers']}/{planned(rooms)} joined, "
            f"{rooms['delivered_fraction']:.0%}, lost {rooms['lost']}",
            kept,
            f"all joined, >= {config.KEEP_UP_FRACTION:.0%}, 0 lost",
        ),
        _check(
            f"{server} rooms: Redis connections per process",
            connections,
            _at_most(connections, config.REDIS_CONNECTIONS_PER_PROCESS_MAX),
            f"<= {config.REDIS_CONNECTIONS_PER_PROCESS_MAX} (not one per room)",
        ),
    ]


def _storm_checks(runs: list[Run], server: str) -> list[dict[str, Any]]:
    storm = find(runs, "storm", "switchboard", server)
    resumed = passed = None
    if storm is not None:
        everyone = storm["movers"] >= storm["planned_movers"]
        seconds = storm["all_resumed_seconds"]
        passed = bool(everyone and _at_most(seconds, config.STORM_RESUME_SECONDS_MAX))
        resumed = (
            seconds
            if everyone and seconds is not None
            else f"{_resumed(storm)} in {storm['give_up_seconds']:g} s"
        )
    p99 = storm and storm["p99_ms"]
    return [
        _check(
            f"{server} storm: every mover resumed",
            resumed,
            passed,
            f"<= {config.STORM_RESUME_SECONDS_MAX:g} s after SIGTERM",
        ),
        _check(
            f"{server} storm: lost",
            storm and storm["lost"],
            None if storm is None else storm["lost"] == 0,
            "0",
        ),
        _check(
            f"{server} storm: duplicated",
            storm and storm["duplicates"],
            None if storm is None else storm["duplicates"] == 0,
            "0",
        ),
        _check(
            f"{server} storm: stayers' p99 during the storm",
            p99,
            _at_most(p99, config.STORM_STAYER_P99_MS_MAX),
            f"<= {config.STORM_STAYER_P99_MS_MAX:g} ms",
        ),
    ]


def check_lines(found: list[dict[str, Any]]) -> str:
    lines = ["[targets from issue 6]"]
    width = max((len(c["target"]) for c in found), default=0)
    for item in found:
        lines.append(
            f"{item['status']:<4}  {item['target']:<{width}}  "
            f"{_fmt(item['value'], 2):>10}  (goal {item['goal']})"
        )
    return "\n".join(lines) + "\n"
