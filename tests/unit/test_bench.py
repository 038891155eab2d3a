"""The bench's own logic: what counts as lost, and when a target passes.

The figures in docs/performance.md are only as good as these rules, so they
are tested like the app's (no servers: the generator's counting and the
report's checks are plain functions of their records).
"""

from typing import Any

import pytest

from bench import config, report
from bench.loadgen import ConnState, Generator, Recorder, lost_by_identity


def subscriber(room: int) -> ConnState:
    return ConnState(room=room, instance=0, greeted=None)


def deliver(rec: Recorder, state: ConnState, key: int, *, sent: float = 1.5) -> None:
    """One message frame reaching ``state`` (inside the window by default)."""
    Generator._delivery(None, rec, state, rec.step, key, sent, now=sent + 0.01)


def recorder_with(sends: dict[int, int]) -> Recorder:
    """A step whose window (1..2 s) sent key -> room as given."""
    rec = Recorder(step=7, t0=1.0, t1=2.0)
    for key, room in sends.items():
        rec.room_of_key[key] = room
        rec.window_keys.setdefault(room, set()).add(key)
    return rec


def test_loss_is_counted_by_subscriber_and_message_not_by_count():
    """A duplicate, or another room's message, cannot stand in for a
    message that never arrived."""
    rec = recorder_with({1: 10, 2: 10, 3: 20})
    a, b, other = subscriber(10), subscriber(10), subscriber(20)
    deliver(rec, a, 1)
    deliver(rec, a, 1)  # twice, and 2 never came
    deliver(rec, b, 1)
    deliver(rec, b, 3)  # room 20's message in room 10
    deliver(rec, b, 2)
    deliver(rec, other, 3)
    assert lost_by_identity(rec, [a, b, other]) == 1  # a's message 2
    assert (rec.duplicates, rec.misrouted) == (1, 1)
    assert rec.window_got_total == 4


def test_a_message_sent_outside_the_window_is_not_expected_in_it():
    rec = recorder_with({1: 10})
    rec.room_of_key[2] = 10  # sent in the warm-up: not a window message
    state = subscriber(10)
    deliver(rec, state, 2, sent=0.5)
    assert lost_by_identity(rec, [state]) == 1
    deliver(rec, state, 1)
    assert lost_by_identity(rec, [state]) == 0


def test_a_watcher_s_activity_counts_once_its_message_is_known_by_its_ack():
    """Activity frames carry (room, seq), not the body: the publisher's ack
    names the message, before or after the activity arrives."""
    rec = recorder_with({1: 10, 2: 10})
    rec.sent_of_client.update({"b7-1": (1, 1.5), "b7-2": (2, 1.6)})
    publisher = ConnState(room=10, instance=0, greeted=None, slug="fanout")
    watcher = ConnState(room=10, instance=1, greeted=None, slug="home")
    activity = {"type": "activity", "kind": "message", "room": "fanout"}
    gen = Generator.__new__(Generator)
    gen._activity(rec, watcher, {**activity, "seq": 41}, now=1.52)  # before its ack
    assert rec.window_got_total == 0
    gen._match_ack(rec, publisher, {"type": "ack", "client_id": "b7-1", "seq": 41})
    gen._match_ack(rec, publisher, {"type": "ack", "client_id": "b7-2", "seq": 42})
    gen._activity(rec, watcher, {**activity, "seq": 42}, now=1.62)  # after
    gen._activity(rec, watcher, {**activity, "seq": 42}, now=1.63)
    assert lost_by_identity(rec, [watcher]) == 0
    assert (rec.window_got_total, rec.duplicates) == (2, 1)
    assert sorted(round(x, 2) for x in rec.latencies) == [0.02, 0.02]
    # Another room's seq 41 is not this message.
    gen._activity(rec, watcher, {**activity, "room": "other", "seq": 41}, now=1.7)
    assert rec.window_got_total == 2


# --- the checks ------------------------------------------------------------------


def fanout(**fields: Any) -> dict[str, Any]:
    run = {
        "scenario": "fanout",
        "target": "switchboard",
        "server": "daphne",
        "subscribers": 500,
        "planned_subscribers": 500,
        "rate_per_s": 50,
        "delivered_fraction": 1.0,
        "p99_ms": 10.0,
        "lost": 0,
        "misrouted": 0,
        "deliveries_per_s": 25_000,
        "cpu_us_per_delivery": 10.0,
    }
    return {**run, **fields}


def status(runs: list[dict[str, Any]], name: str) -> str:
    (found,) = [c for c in report.checks(runs) if c["target"] == name]
    return found["status"]


KEEPS_UP = "daphne fanout 500: keeps up (% of offered)"
P99 = "daphne fanout 500: p99"
LOST = "daphne fanout 500: lost"


@pytest.mark.parametrize(
    ("fields", "name", "expected"),
    [
        ({}, KEEPS_UP, "PASS"),
        ({"delivered_fraction": config.KEEP_UP_FRACTION}, KEEPS_UP, "PASS"),
        ({"delivered_fraction": config.KEEP_UP_FRACTION - 0.001}, KEEPS_UP, "FAIL"),
        ({"subscribers": 499}, KEEPS_UP, "FAIL"),  # one never joined
        ({"p99_ms": config.FANOUT_500_P99_MS}, P99, "PASS"),
        ({"p99_ms": config.FANOUT_500_P99_MS + 0.01}, P99, "FAIL"),
        ({"lost": 1}, LOST, "FAIL"),
        ({"misrouted": 1}, LOST, "FAIL"),
        ({}, LOST, "PASS"),
    ],
)
def test_the_fanout_500_targets_at_their_boundaries(fields, name, expected):
    assert status([fanout(**fields)], name) == expected


def test_a_missing_run_is_not_a_pass():
    assert status([], KEEPS_UP) == "n/a"
    assert status([], "daphne send 200/s: ack p99") == "n/a"


def versus_raw(a_fields: dict, b_fields: dict) -> str:
    whole = {"subscribers": 1000, "planned_subscribers": 1000}
    runs = [
        fanout(**{**whole, **a_fields}),
        fanout(target="raw", server="websockets", **{**whole, **b_fields}),
    ]
    return status(runs, "daphne fanout 1000 @ 50/s: deliveries vs raw")


def test_a_ratio_needs_both_sides_whole():
    raw = {"deliveries_per_s": 50_000}
    at_minimum = config.DAPHNE_VS_RAW_MIN * 50_000
    assert versus_raw({"deliveries_per_s": at_minimum}, raw) == "PASS"
    # (ratios are rounded to 2 places, as the report prints them)
    assert versus_raw({"deliveries_per_s": at_minimum - 500}, raw) == "FAIL"
    assert versus_raw({"subscribers": 990}, {}) == "FAIL"
    assert versus_raw({}, {"subscribers": 990}) == "FAIL"  # a smaller baseline


SATURATION = "daphne fanout 1000 @ 100/s: p99 vs raw"


def saturation(a_fields: dict, b_fields: dict) -> str:
    at = {"subscribers": 1000, "planned_subscribers": 1000, "rate_per_s": 100}
    runs = [
        fanout(**{**at, "p99_ms": 100.0, **a_fields}),
        fanout(target="raw", server="websockets", **{**at, "p99_ms": 50.0, **b_fields}),
    ]
    return status(runs, SATURATION)


def test_saturation_is_p99_against_raw_at_the_same_load_with_nothing_lost():
    limit = config.SATURATION_P99_VS_RAW_MAX
    assert saturation({"p99_ms": 50.0 * limit}, {}) == "PASS"
    assert saturation({"p99_ms": 50.0 * limit + 0.5}, {}) == "FAIL"
    assert saturation({"lost": 1}, {}) == "FAIL"
    assert saturation({"subscribers": 990}, {}) == "FAIL"
    # Another load's raw run is not a baseline.
    assert saturation({}, {"rate_per_s": 50}) == "n/a"


def test_the_stored_message_aim_compares_rooms_with_the_tutorial():
    name = (
        "daphne rooms: server CPU per stored message vs tutorial "
        "(an aim: docs/performance.md)"
    )
    rooms = {
        "scenario": "rooms", "server": "daphne", "subscribers": 5000,
        "planned_subscribers": 5000, "rate_per_s": 200, "delivered_fraction": 1.0,
        "kept_up": True, "lost": 0, "redis_connections_per_process": [11, 10],
    }  # fmt: skip
    runs = [
        {**rooms, "target": "switchboard", "cpu_us_per_delivery": 240.0},
        {**rooms, "target": "tutorial", "cpu_us_per_delivery": 480.0},
    ]
    assert status(runs, name) == "PASS"
    runs[0]["cpu_us_per_delivery"] = 250.0
    assert status(runs, name) == "FAIL"
    assert status(runs[:1], name) == "n/a"


def send(**fields: Any) -> dict[str, Any]:
    run = {
        "scenario": "send",
        "target": "switchboard",
        "server": "daphne",
        "subscribers": 25,
        "rate_per_s": config.SEND_CHECK_RATE,
        "ack_p99_ms": 4.0,
        "unacked": 0,
    }
    return {**run, **fields}


def test_a_send_never_acknowledged_fails_the_ack_target():
    name = f"daphne send {config.SEND_CHECK_RATE}/s: ack p99"
    assert status([send()], name) == "PASS"
    assert status([send(ack_p99_ms=config.SEND_ACK_P99_MS_MAX)], name) == "PASS"
    assert status([send(ack_p99_ms=config.SEND_ACK_P99_MS_MAX + 0.1)], name) == "FAIL"
    assert status([send(unacked=1)], name) == "FAIL"


def storm(**fields: Any) -> dict[str, Any]:
    run = {
        "scenario": "storm",
        "target": "switchboard",
        "server": "daphne",
        "movers": 2000,
        "planned_movers": 2000,
        "all_resumed_seconds": 8.0,
        "give_up_seconds": 30,
        "lost": 0,
        "duplicates": 0,
        "p99_ms": 50.0,
        "resumed": 2000,
    }
    return {**run, **fields}


def test_the_storm_targets():
    resumed = "daphne storm: every mover resumed"
    assert status([storm()], resumed) == "PASS"
    limit = config.STORM_RESUME_SECONDS_MAX
    assert status([storm(all_resumed_seconds=limit + 0.01)], resumed) == "FAIL"
    assert status([storm(movers=1999)], resumed) == "FAIL"
    assert status([storm(all_resumed_seconds=None)], resumed) == "FAIL"
    assert status([storm(duplicates=1)], "daphne storm: duplicated") == "FAIL"
    assert status([storm(lost=1)], "daphne storm: lost") == "FAIL"
