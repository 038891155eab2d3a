"""The soak's verdict: pure functions over what the run recorded.

No I/O and no third-party imports, so the unit tier (tests/unit/test_soak.py)
feeds them synthetic records: a checker that misses a loss would hide one.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from soak import config
from soak.timeline import Timeline, message_crc

EXAMPLES = 10  # examples kept per kind of finding


@dataclass(frozen=True)
class Stored:
    """One row of ``core_message`` as read back at the end."""

    seq: int
    client_id: str | None
    body: str
    author: str

    @property
    def crc(self) -> int:
        return message_crc(self.author, self.client_id, self.body)


# --- acknowledged messages against the database ------------------------------


def account_messages(
    sent: Mapping[str, Mapping[str, str]],
    acked: Mapping[str, Mapping[str, int]],
    stored: Mapping[str, Sequence[Stored]],
    last_seq: Mapping[str, int],
) -> dict[str, Any]:
    """Every acknowledged send against what PostgreSQL holds, per room.

    ``sent``: room -> client_id -> body of every send a client made;
    ``acked``: room -> client_id -> seq its ack carried; ``stored``: room ->
    the rows; ``last_seq``: room -> ``Room.last_seq``.

    - lost: an acked client_id with no row, or whose row has another seq or
      another body than the ack and the send said;
    - duplicated: a client_id stored more than once in a room;
    - holes: seqs of 1..last_seq with no row, or rows above last_seq;
    - stored_unacked / unacked_not_stored: sends never acknowledged, which
      were or were not stored (not losses: nobody was told they were).
    """
    lost: list[dict[str, Any]] = []
    duplicated: list[dict[str, Any]] = []
    holes: list[dict[str, Any]] = []
    acknowledged = stored_unacked = unacked_not_stored = foreign = 0
    rooms = set(sent) | set(acked) | set(stored) | set(last_seq)
    for room in sorted(rooms):
        rows = stored.get(room, ())
        by_client: dict[str, list[Stored]] = {}
        for row in rows:
            if row.client_id is not None:
                by_client.setdefault(row.client_id, []).append(row)
        for client_id, copies in sorted(by_client.items()):
            if len(copies) > 1:
                duplicated.append(
                    {
                        "room": room,
                        "client_id": client_id,
                        "seqs": sorted(row.seq for row in copies),
                    }
                )
        room_sent = sent.get(room, {})
        room_acked = acked.get(room, {})
        for client_id, seq in sorted(room_acked.items()):
            acknowledged += 1
            copies = by_client.get(client_id, [])
            body = room_sent.get(client_id)
            if not copies:
                why = "no row"
            elif all(row.seq != seq for row in copies):
                why = f"stored as seq {copies[0].seq}, acked as {seq}"
            elif body is not None and all(row.body != body for row in copies):
                why = "stored with another body"
            else:
                continue
            lost.append({"room": room, "client_id": client_id, "seq": seq, "why": why})
        for client_id in room_sent:
            if client_id in room_acked:
                continue
            if client_id in by_client:
                stored_unacked += 1
            else:
                unacked_not_stored += 1
        foreign += sum(1 for client_id in by_client if client_id not in room_sent)
        seqs = sorted(row.seq for row in rows)
        top = last_seq.get(room, 0)
        present = set(seqs)
        missing = [seq for seq in range(1, top + 1) if seq not in present]
        extra = [seq for seq in seqs if seq > top or seq < 1]
        repeated = [seq for seq, n in Counter(seqs).items() if n > 1]
        if missing or extra or repeated:
            holes.append(
                {
                    "room": room,
                    "missing": missing[:EXAMPLES],
                    "missing_count": len(missing),
                    "extra": extra[:EXAMPLES],
                    "repeated": sorted(repeated)[:EXAMPLES],
                }
            )
    return {
        "acknowledged": acknowledged,
        "lost": len(lost),
        "duplicated": len(duplicated),
        "holes": len(holes),
        "stored_unacked": stored_unacked,
        "unacked_not_stored": unacked_not_stored,
        "foreign": foreign,
        "lost_examples": lost[:EXAMPLES],
        "duplicated_examples": duplicated[:EXAMPLES],
        "hole_examples": holes[:EXAMPLES],
    }


# --- what each connected client holds -------------------------------------------


@dataclass
class ClientView:
    """A client at the end: its room, whether it is connected, its timeline."""

    name: str
    room: str
    connected: bool
    timeline: Timeline


def account_visibility(
    clients: Iterable[ClientView],
    stored: Mapping[str, Sequence[Stored]],
    last_seq: Mapping[str, int],
) -> dict[str, Any]:
    """Every client connected at the end must hold 1..last_seq of its room,
    each seq once (duplicates are dropped by seq, as the protocol says) and
    with the content PostgreSQL stored.

    A missing seq is "invisible" to that client; a seq held with other
    content is "wrong"; one held above last_seq is a "phantom".
    """
    crcs = {room: {row.seq: row.crc for row in rows} for room, rows in stored.items()}
    checked = 0
    not_connected: list[str] = []
    invisible_total = wrong_total = phantom_total = 0
    invisible: list[dict[str, Any]] = []
    wrong: list[dict[str, Any]] = []
    phantoms: list[dict[str, Any]] = []
    conflicts = duplicates = 0
    for client in clients:
        timeline = client.timeline
        duplicates += timeline.duplicates
        conflicts += len(timeline.conflicts)
        if not client.connected:
            not_connected.append(client.name)
            continue
        checked += 1
        top = last_seq.get(client.room, 0)
        missing = timeline.missing(top)
        if missing:
            invisible_total += len(missing)
            invisible.append(
                {
                    "client": client.name,
                    "room": client.room,
                    "count": len(missing),
                    "first": missing[:EXAMPLES],
                    "contiguous": timeline.contiguous,
                    "known": timeline.known,
                }
            )
        room_crcs = crcs.get(client.room, {})
        bad = [
            seq
            for seq in range(1, top + 1)
            if (held := timeline.crc(seq)) is not None and held != room_crcs.get(seq)
        ]
        if bad:
            wrong_total += len(bad)
            wrong.append(
                {"client": client.name, "room": client.room, "seqs": bad[:EXAMPLES]}
            )
        beyond = timeline.beyond(top)
        if beyond:
            phantom_total += len(beyond)
            phantoms.append(
                {"client": client.name, "room": client.room, "seqs": beyond[:EXAMPLES]}
            )
    return {
        "checked": checked,
        "not_connected": len(not_connected),
        "not_connected_examples": not_connected[:EXAMPLES],
        "invisible": invisible_total,
        "clients_with_invisible": len(invisible),
        "invisible_examples": sorted(invisible, key=lambda x: -x["count"])[:EXAMPLES],
        "wrong_content": wrong_total,
        "wrong_content_examples": wrong[:EXAMPLES],
        "phantoms": phantom_total,
        "phantom_examples": phantoms[:EXAMPLES],
        "conflicts": conflicts,
        "duplicates_dropped": duplicates,
    }


# --- resources -------------------------------------------------------------------


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per minute.

    None with fewer than 3 points or no spread in time.
    """
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return slope * 60.0


def last_half(
    points: Sequence[tuple[float, float]], start: float, end: float
) -> list[tuple[float, float]]:
    """The points of the second half of [start, end]."""
    middle = (start + end) / 2
    return [(t, v) for t, v in points if middle <= t <= end]


MIB = 1024 * 1024


def summarize_resources(
    samples: Sequence[Mapping[str, Any]], duration: float, restart_at: float | None
) -> dict[str, Any]:
    """Per-instance memory, descriptors and sockets, Redis and PostgreSQL
    connections, from the monitor's samples (soak/monitor.py).

    The last sample is the final one, taken once the clients are all back
    and the servers' client sockets match them (or a deadline passed).
    Traffic runs from t = 0 to ``duration``; the memory slope is fitted to
    its second half; baselines come from the first half after the warm-up.
    """
    final = samples[-1]
    names = list(final["instances"])
    instances: dict[str, Any] = {}
    for name in names:
        rows = [
            (sample["t"], sample["instances"][name])
            for sample in samples
            if sample["instances"].get(name, {}).get("alive")
        ]
        during = [(t, f) for t, f in rows if 0 <= t <= duration]
        rss = [(t, f["rss"] / MIB) for t, f in during]
        fd_other = [(t, f["fds"] - f["client_sockets"]) for t, f in during]
        first_half = [
            v for t, v in fd_other if config.WARMUP_SECONDS <= t <= duration / 2
        ]
        end = final["instances"][name]
        alive = bool(end.get("alive"))
        instances[name] = {
            "rss_mib_first": rss[0][1] if rss else float("nan"),
            "rss_mib_last": rss[-1][1] if rss else float("nan"),
            "rss_mib_max": max((v for _, v in rss), default=None),
            "rss_slope_mib_per_min": slope_per_minute(last_half(rss, 0, duration)),
            "fds_first": during[0][1]["fds"] if during else None,
            "fds_last": end.get("fds"),
            "fds_max": max((f["fds"] for _, f in during), default=None),
            "fd_other_baseline": max(first_half) if first_half else None,
            "fd_other_end": end["fds"] - end["client_sockets"] if alive else None,
            "stale_sockets_end": (
                end["client_sockets"] - end["ws_open_by_clients"] if alive else None
            ),
            "client_sockets_end": end.get("client_sockets"),
            "ws_open_end": end.get("ws_open_by_clients"),
            "redis_sockets_max": max(
                (f["redis_sockets"] for _, f in during), default=None
            ),
            "postgres_sockets_max": max(
                (f["postgres_sockets"] for _, f in during), default=None
            ),
            "alive_at_end": alive,
        }
    redis = [
        (sample["t"], sample["redis_clients"])
        for sample in samples
        if sample.get("redis_clients") is not None
    ]
    before = [
        v
        for t, v in redis
        if t >= config.WARMUP_SECONDS and (restart_at is None or t < restart_at)
    ]
    postgres = [
        sample["pg_app_connections"]
        for sample in samples
        if sample.get("pg_app_connections") is not None
    ]
    postgres_all = [
        sample["pg_client_connections"]
        for sample in samples
        if sample.get("pg_client_connections") is not None
    ]
    return {
        "fit_seconds": duration / 2,
        "instances": instances,
        "redis": {
            "before_restart_max": max(before, default=None),
            "max": max((v for _, v in redis), default=None),
            "end": final.get("redis_clients"),
        },
        "postgres": {
            "max": max(postgres, default=None),
            "end": final.get("pg_app_connections"),
            "all_client_backends_max": max(postgres_all, default=None),
        },
    }


# --- logs ------------------------------------------------------------------------

# backend/settings.py's format: "%(asctime)s %(levelname)s %(name)s %(message)s".
LOG_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?"
    r" +(?P<level>[A-Z]+) +(?P<logger>\S+)"
)
# Anything else that says ERROR or CRITICAL as a word (another library's
# format, a bare "ERROR:" prefix) counts too: the soak must not miss one.
ERROR_WORD = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b")
TRACEBACK = "Traceback (most recent call last)"
TRACEBACK_GLUE = (
    "The above exception was the direct cause",
    "During handling of the above exception",
)


def _log_time(line: str) -> float | None:
    """The wall-clock time of a log record (local time, as logging writes)."""
    try:
        stamp = time.strptime(line[:19].replace("T", " "), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return time.mktime(stamp)


def scan_log(text: str, window: tuple[float, float] | None = None) -> dict[str, Any]:
    """ERROR/CRITICAL lines, tracebacks (a chained exception counts once)
    and WARNING lines (by logger).

    With ``window`` (wall-clock start and end), also how many ERROR lines
    fall in it: the report says how many came with the Redis outage.
    A traceback's own lines are not read for the word ERROR.
    """
    errors: list[str] = []
    warnings: Counter[str] = Counter()
    tracebacks = 0
    in_window = 0
    in_traceback = chained = False
    for line in text.splitlines():
        if line.startswith(TRACEBACK_GLUE):
            chained = True  # the next traceback belongs to the same exception
            continue
        if TRACEBACK in line:
            tracebacks += 0 if chained else 1
            in_traceback, chained = True, False
            continue
        if in_traceback:
            if not line or line[0].isspace():
                continue
            in_traceback = False  # the exception's own line ends it
            continue
        if not line:
            continue
        chained = False
        record = LOG_RECORD.match(line)
        if record:
            level = record["level"]
            if level in ("ERROR", "CRITICAL"):
                errors.append(line)
                at = _log_time(line)
                if window and at is not None and window[0] <= at <= window[1]:
                    in_window += 1
            elif level == "WARNING":
                warnings[record["logger"]] += 1
        elif ERROR_WORD.search(line):
            errors.append(line)
    return {
        "error_lines": len(errors),
        "tracebacks": tracebacks,
        "error_lines_in_window": in_window,
        "error_examples": [line[:400] for line in errors[:EXAMPLES]],
        "error_kinds": dict(
            Counter(_kind(line) for line in errors).most_common(EXAMPLES)
        ),
        "warnings_by_logger": dict(warnings.most_common()),
    }


def _kind(line: str) -> str:
    """An ERROR line without its time stamp and numbers, for grouping."""
    record = LOG_RECORD.match(line)
    rest = line[record.end() :] if record else line
    return re.sub(r"\d+", "N", f"{record['logger'] if record else ''}{rest}")[:160]


# --- the verdict -------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    name: str
    value: Any
    limit: str
    passed: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "note": self.note,
        }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def criteria(result: Mapping[str, Any]) -> list[Criterion]:
    """Every fail criterion of docs/reliability.md, evaluated on ``result``.

    ``result`` has the sections the runner writes: messages, visibility,
    frames, logs, resources (see soak/runner.py).
    """
    messages = result["messages"]
    visibility = result["visibility"]
    frames = result["frames"]
    wrong = visibility["wrong_content"] + visibility["phantoms"]
    wrong += visibility["conflicts"]
    out = [
        Criterion(
            "acknowledged messages lost",
            messages["lost"],
            "0",
            messages["lost"] == 0,
            f"{messages['acknowledged']} acknowledged",
        ),
        Criterion(
            "acknowledged messages duplicated",
            messages["duplicated"],
            "0",
            messages["duplicated"] == 0,
        ),
        Criterion(
            "seq holes or repeats in the database",
            messages["holes"],
            "0 rooms",
            messages["holes"] == 0,
        ),
        Criterion(
            "sends never acknowledged by the end",
            messages["unacked_at_end"],
            "0",
            messages["unacked_at_end"] == 0,
            "a send a connected client still waits for after the drain",
        ),
        Criterion(
            "messages invisible to connected clients",
            visibility["invisible"],
            "0",
            visibility["invisible"] == 0,
            f"{visibility['clients_with_invisible']} of {visibility['checked']} "
            "clients",
        ),
        Criterion(
            "messages held with wrong content, or above last_seq",
            wrong,
            "0",
            wrong == 0,
        ),
        Criterion(
            "clients not connected at the end",
            visibility["not_connected"],
            "0",
            visibility["not_connected"] == 0,
        ),
        Criterion(
            "unexpected error frames",
            sum(frames["errors_unexpected"].values()),
            "0",
            not frames["errors_unexpected"],
            _counts(frames["errors_unexpected"])
            + (
                f"; expected: {_counts(frames['errors_expected'])}"
                if frames["errors_expected"]
                else ""
            ),
        ),
        Criterion(
            "unexpected closes and refused handshakes",
            sum(frames["closes_unexpected"].values()),
            "0",
            not frames["closes_unexpected"],
            _counts(frames["closes_unexpected"]),
        ),
        Criterion(
            "removed member's connections not closed with 4403 in time",
            frames["revocations_missed"],
            "0",
            frames["revocations_missed"] == 0,
            f"{frames['revocations']} closed with 4403"
            + (
                f", slowest {frames['revocation_max_s']:.1f} s"
                if frames.get("revocation_max_s") is not None
                else ""
            ),
        ),
        Criterion(
            "client-side anomalies (dead links, unanswered history, ack conflicts)",
            sum(frames["anomalies"].values()),
            "0",
            not frames["anomalies"],
            _counts(frames["anomalies"]),
        ),
    ]
    exited = result.get("exited", [])
    out.append(
        Criterion(
            "instances that exited during the run",
            len(exited),
            "0",
            not exited,
            ", ".join(exited),
        )
    )
    for name, scan in sorted(result["logs"].items()):
        count = scan["error_lines"] + scan["tracebacks"]
        out.append(
            Criterion(
                f"{name}: ERROR lines + tracebacks in the log",
                count,
                "0",
                count == 0,
                f"{scan['error_lines']} ERROR, {scan['tracebacks']} tracebacks",
            )
        )
    resources = result["resources"]
    for name, instance in sorted(resources["instances"].items()):
        slope = instance["rss_slope_mib_per_min"]
        conclusive = resources["fit_seconds"] >= config.MEMORY_CONCLUSIVE_SECONDS
        out.append(
            Criterion(
                f"{name}: RSS growth over the last half, MiB/min",
                None if slope is None else round(slope, 3),
                f"<= {config.MEMORY_SLOPE_MIB_PER_MIN_MAX:g}",
                slope is not None and slope <= config.MEMORY_SLOPE_MIB_PER_MIN_MAX,
                f"{instance['rss_mib_first']:.0f} -> {instance['rss_mib_last']:.0f} MiB"
                + ("" if conclusive else "; fit window too short to be conclusive"),
            )
        )
        baseline = instance["fd_other_baseline"]
        end = instance["fd_other_end"]
        out.append(
            Criterion(
                f"{name}: descriptors besides client sockets at the end",
                end,
                f"<= {_fmt(baseline, 0)} + {config.FD_SLACK} (first half's highest)",
                baseline is not None
                and end is not None
                and end <= baseline + config.FD_SLACK,
                f"fds {instance['fds_first']} -> {instance['fds_last']}",
            )
        )
        stale = instance["stale_sockets_end"]
        out.append(
            Criterion(
                f"{name}: server-side client sockets with no client at the end",
                stale,
                f"<= {config.STALE_SOCKETS_MAX}",
                stale is not None and stale <= config.STALE_SOCKETS_MAX,
            )
        )
    redis = resources["redis"]
    out.append(
        Criterion(
            "Redis clients at the end",
            redis["end"],
            f"<= {_fmt(redis['before_restart_max'], 0)} + {config.REDIS_CLIENT_SLACK}"
            " (highest before the restart)",
            redis["end"] is not None
            and redis["before_restart_max"] is not None
            and redis["end"] <= redis["before_restart_max"] + config.REDIS_CLIENT_SLACK,
            f"max {redis['max']}",
        )
    )
    postgres = resources["postgres"]
    bound = config.INSTANCES * config.DB_POOL_SIZE
    out.append(
        Criterion(
            "PostgreSQL connections to the app database, highest",
            postgres["max"],
            f"<= {bound} ({config.INSTANCES} x pool of {config.DB_POOL_SIZE})",
            postgres["max"] is not None and postgres["max"] <= bound,
            f"end {postgres['end']}",
        )
    )
    return out


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counts.items()))


def failures(found: Iterable[Criterion]) -> list[str]:
    """One line per failed criterion."""
    return [
        f"{c.name}: {c.value} (limit {c.limit})" + (f"; {c.note}" if c.note else "")
        for c in found
        if not c.passed
    ]
