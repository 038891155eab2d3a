"""The soak's checker (soak/checks.py, soak/timeline.py) on synthetic records.

A bug in the checker would hide exactly what the soak exists to find, so it
is fed records with a known lost message, a known duplicate, a known
invisible message and known growth, and must report each of them.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from soak import checks
from soak.checks import ClientView, Stored
from soak.timeline import Timeline, message_crc

ROOM = "soak-r00"


def row(seq: int, client_id: str | None, body: str, author: str = "soak-u00"):
    return Stored(seq=seq, client_id=client_id, body=body, author=author)


def sends(*client_ids: str) -> dict[str, dict[str, str]]:
    return {ROOM: {cid: f"body of {cid}" for cid in client_ids}}


# --- acknowledged messages against the database -------------------------------


def test_one_lost_and_one_duplicated_are_both_reported() -> None:
    sent = sends("a-1", "a-2", "a-3")
    acked = {ROOM: {"a-1": 1, "a-2": 2, "a-3": 3}}
    stored = {
        ROOM: [
            row(1, "a-1", "body of a-1"),
            # a-2 was acknowledged as seq 2 and is gone: lost
            row(2, "a-3", "body of a-3"),
            row(3, "a-3", "body of a-3"),  # stored twice: duplicated
        ]
    }
    found = checks.account_messages(sent, acked, stored, {ROOM: 3})

    assert found["acknowledged"] == 3
    assert found["lost"] == 1
    assert found["lost_examples"][0]["client_id"] == "a-2"
    assert found["duplicated"] == 1
    assert found["duplicated_examples"][0] == {
        "room": ROOM,
        "client_id": "a-3",
        "seqs": [2, 3],
    }
    failed = checks.failures(checks.criteria(clean_result(messages=found)))
    assert any(line.startswith("acknowledged messages lost: 1") for line in failed)
    assert any(
        line.startswith("acknowledged messages duplicated: 1") for line in failed
    )


def test_an_ack_whose_row_has_another_seq_or_body_is_lost() -> None:
    sent = sends("a-1", "a-2")
    acked = {ROOM: {"a-1": 1, "a-2": 2}}
    stored = {ROOM: [row(1, "a-2", "body of a-2"), row(2, "a-1", "something else")]}
    found = checks.account_messages(sent, acked, stored, {ROOM: 2})

    assert found["lost"] == 2
    reasons = {x["client_id"]: x["why"] for x in found["lost_examples"]}
    assert reasons == {
        "a-1": "stored as seq 2, acked as 1",
        "a-2": "stored as seq 1, acked as 2",
    }


def test_unacknowledged_sends_are_not_losses_but_holes_are_reported() -> None:
    sent = sends("a-1", "a-2", "a-3")
    acked = {ROOM: {"a-1": 1}}
    stored = {ROOM: [row(1, "a-1", "body of a-1"), row(3, "a-2", "body of a-2")]}
    found = checks.account_messages(sent, acked, stored, {ROOM: 3})

    assert found["lost"] == 0
    assert found["stored_unacked"] == 1  # a-2: stored, the ack never came
    assert found["unacked_not_stored"] == 1  # a-3
    assert found["holes"] == 1
    assert found["hole_examples"][0]["missing"] == [2]


def test_a_clean_record_passes_every_criterion() -> None:
    sent = sends("a-1", "a-2")
    acked = {ROOM: {"a-1": 1, "a-2": 2}}
    stored = {ROOM: [row(1, "a-1", "body of a-1"), row(2, "a-2", "body of a-2")]}
    found = checks.account_messages(sent, acked, stored, {ROOM: 2})

    assert checks.failures(checks.criteria(clean_result(messages=found))) == []


# --- what connected clients hold ------------------------------------------------


def holding(seqs: list[int], stored: list[Stored]) -> Timeline:
    by_seq = {r.seq: r for r in stored}
    timeline = Timeline()
    for seq in seqs:
        r = by_seq[seq]
        timeline.add(seq, message_crc(r.author, r.client_id, r.body))
    return timeline


def test_a_message_missing_from_a_connected_client_is_invisible() -> None:
    stored = [row(n, f"a-{n}", f"body {n}") for n in range(1, 6)]
    complete = holding([1, 2, 3, 4, 5], stored)
    gap = holding([1, 2, 4, 5], stored)
    gone = holding([1], stored)  # not connected: not held to it
    found = checks.account_visibility(
        [
            ClientView("whole", ROOM, True, complete),
            ClientView("gap", ROOM, True, gap),
            ClientView("gone", ROOM, False, gone),
        ],
        {ROOM: stored},
        {ROOM: 5},
    )

    assert found["checked"] == 2
    assert found["invisible"] == 1
    assert found["invisible_examples"][0]["client"] == "gap"
    assert found["invisible_examples"][0]["first"] == [3]
    assert found["not_connected"] == 1


def test_a_message_held_with_other_content_or_above_last_seq_is_reported() -> None:
    stored = [row(1, "a-1", "body 1"), row(2, "a-2", "body 2")]
    timeline = holding([1], stored)
    timeline.add(2, message_crc("soak-u00", "a-2", "not what was stored"))
    timeline.add(3, 12345)  # the database has no seq 3
    found = checks.account_visibility(
        [ClientView("c", ROOM, True, timeline)], {ROOM: stored}, {ROOM: 2}
    )

    assert found["invisible"] == 0
    assert found["wrong_content"] == 1
    assert found["phantoms"] == 1


def test_timeline_drops_duplicates_by_seq_and_notices_conflicts() -> None:
    timeline = Timeline()
    assert timeline.add(2, 20)
    assert timeline.contiguous == 0
    assert timeline.has_gap
    assert timeline.add(1, 10)
    assert timeline.contiguous == 2
    assert not timeline.add(1, 10)
    assert not timeline.add(2, 99)  # same seq, other content
    assert timeline.duplicates == 2
    assert timeline.conflicts == [2]
    timeline.mention(4)
    assert timeline.missing(4) == [3, 4]
    timeline.reset()
    assert (timeline.contiguous, timeline.known, timeline.held_count()) == (0, 0, 0)
    assert timeline.conflicts == [2]  # kept across a reset, for the verdict


# --- memory slope ---------------------------------------------------------------


def test_slope_per_minute_of_a_line_and_of_noise() -> None:
    line = [(t, 100 + 2.0 * t / 60) for t in range(0, 600, 2)]
    assert checks.slope_per_minute(line) == pytest.approx(2.0)
    noise = [(t, 100 + (1 if t % 4 else -1)) for t in range(0, 600, 2)]
    assert abs(checks.slope_per_minute(noise)) < 0.01
    assert checks.slope_per_minute(line[:2]) is None


def test_memory_that_levels_off_passes_and_growth_fails() -> None:
    # Fast growth in the first half, flat in the second: it levelled off.
    levels = [(t, 100 + min(t, 300) / 10) for t in range(0, 601, 2)]
    assert checks.slope_per_minute(checks.last_half(levels, 0, 600)) == 0

    growing = samples(lambda t: 100 + 1.5 * t / 60, duration=600)
    resources = checks.summarize_resources(growing, 600, restart_at=240)
    slope = resources["instances"]["instance-a"]["rss_slope_mib_per_min"]
    assert slope == pytest.approx(1.5)
    result = clean_result(resources=resources)
    failed = checks.failures(checks.criteria(result))
    assert any("RSS growth" in line for line in failed)

    flat = samples(lambda t: 120.0, duration=600)
    result = clean_result(resources=checks.summarize_resources(flat, 600, 240))
    assert checks.failures(checks.criteria(result)) == []


def test_descriptor_and_connection_leaks_fail() -> None:
    def leak(sample: dict[str, Any]) -> None:
        figures = sample["instances"]["instance-a"]
        figures["fds"] += int(sample["t"] // 10)  # one more fd every 10 s
        sample["pg_app_connections"] = 17 if sample["t"] > 500 else 4
        sample["redis_clients"] = 30 if sample["t"] > 500 else 10

    grown = samples(lambda t: 120.0, duration=600, change=leak)
    result = clean_result(resources=checks.summarize_resources(grown, 600, 240))
    failed = checks.failures(checks.criteria(result))
    assert any("descriptors besides client sockets" in line for line in failed)
    assert any("PostgreSQL connections" in line for line in failed)
    assert any("Redis clients at the end" in line for line in failed)


# --- logs -----------------------------------------------------------------------

LOG = """\
2026-12-05 14:10:05,001 INFO daphne.server Listening on TCP address 127.0.0.1:1
127.0.0.1:39916 - - [05/Dec/2026:14:10:06] "WSDISCONNECT /ws/rooms/soak-r00/" - -
2026-12-05 14:10:06,450 ERROR channels_redis.pubsub Unexpected exception in receive task
Traceback (most recent call last):
  File "x.py", line 1, in f
ConnectionRefusedError: [Errno 111] Connect call failed

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "y.py", line 2, in g
redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:56939.
2026-12-05 14:10:06,584 WARNING core.limits limits: Redis failed for anonymous
2026-12-05 14:10:09,000 WARNING core.presence presence update failed; retrying
Traceback (most recent call last):
  File "z.py", line 3, in h
OSError: boom
2026-12-05 14:20:00,000 CRITICAL core.x later
ERROR: something printed without the logging format
"""


def test_scan_log_counts_errors_tracebacks_and_warnings() -> None:
    start = time.mktime(time.strptime("2026-12-05 14:10:00", "%Y-%m-%d %H:%M:%S"))
    found = checks.scan_log(LOG, window=(start, start + 20))

    assert found["error_lines"] == 3
    assert found["error_lines_in_window"] == 1
    assert found["tracebacks"] == 2  # the chained pair is one exception
    assert found["warnings_by_logger"] == {"core.limits": 1, "core.presence": 1}
    failed = checks.failures(checks.criteria(clean_result(logs={"instance-a": found})))
    assert failed == [
        "instance-a: ERROR lines + tracebacks in the log: 5 (limit 0); "
        "3 ERROR, 2 tracebacks"
    ]


# --- helpers ----------------------------------------------------------------------


def samples(rss_mib, *, duration: float, change=None) -> list[dict[str, Any]]:
    """Monitor samples every 2 s with RSS ``rss_mib(t)`` and steady sockets,
    and a final sample after the traffic."""
    out = []
    for t in [*range(0, int(duration) + 1, 2), duration + 5]:
        sample = {
            "t": float(t),
            "instances": {
                "instance-a": {
                    "alive": True,
                    "rss": rss_mib(min(t, duration)) * checks.MIB,
                    "fds": 100,
                    "client_sockets": 70,
                    "ws_open_by_clients": 70,
                    "redis_sockets": 6,
                    "postgres_sockets": 4,
                }
            },
            "redis_clients": 10,
            "pg_app_connections": 4,
        }
        if change is not None:
            change(sample)
        out.append(sample)
    out[-1]["label"] = "final"
    return out


def clean_result(**sections: Any) -> dict[str, Any]:
    """A record with nothing wrong in it, but for ``sections``."""
    result: dict[str, Any] = {
        "messages": {
            "acknowledged": 10,
            "lost": 0,
            "duplicated": 0,
            "holes": 0,
        },
        "visibility": {
            "checked": 3,
            "not_connected": 0,
            "invisible": 0,
            "clients_with_invisible": 0,
            "wrong_content": 0,
            "phantoms": 0,
            "conflicts": 0,
        },
        "frames": {
            "errors_unexpected": {},
            "errors_expected": {"forbidden": 1},
            "closes_unexpected": {},
            "anomalies": {},
            "revocations": 1,
            "revocations_missed": 0,
            "revocation_max_s": 0.2,
        },
        "logs": {"instance-a": {"error_lines": 0, "tracebacks": 0}},
        "resources": checks.summarize_resources(
            samples(lambda t: 120.0, duration=600), 600, 240
        ),
        "exited": [],
    }
    result.update(sections)
    result["messages"].setdefault("unacked_at_end", 0)
    return result
