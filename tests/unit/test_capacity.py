"""The capacity model's arithmetic (bench/capacity.py, docs/capacity.md).

A synthetic results file built from known unit costs: the derivation must
find them again, the checks must score an exact prediction 0 % off, and
the plan must grow with the load.
"""

import pytest

from bench import capacity

DELIVERY = 9.0  # µs per delivery
MESSAGE = 2000.0  # µs per stored message
PROCESS = 50_000.0  # µs/s per process
DB_MSG, DB_BASE = 600.0, 20_000.0
REDIS_MSG, REDIS_BASE = 100.0, 10_000.0


def pct(us_per_s: float) -> float:
    return us_per_s / 10_000.0


def server_pct(msgs: float, deliveries: float, extra: float = 0.0) -> float:
    return pct(2 * PROCESS + MESSAGE * msgs + DELIVERY * deliveries + extra)


def run(scenario: str, **fields):
    return {
        "scenario": scenario,
        "target": "switchboard",
        "server": "daphne",
        "variant": "",
        **fields,
    }


def fanout(subs: int, rate: int):
    d = subs * rate
    return run(
        "fanout",
        instances=2,
        subscribers=subs,
        rate_per_s=rate,
        deliveries_per_s=d,
        server_cpu_pct=server_pct(rate, d),
        redis_cpu_pct=pct(REDIS_BASE + REDIS_MSG * rate),
        database_cpu_pct=pct(DB_BASE + DB_MSG * rate),
    )


def send(rate: int):
    d = 25 * rate
    return run(
        "send",
        instances=2,
        subscribers=25,
        rate_per_s=rate,
        stored_per_s=float(rate),
        deliveries_per_s=d,
        server_cpu_pct=server_pct(rate, d),
        redis_cpu_pct=pct(REDIS_BASE + REDIS_MSG * rate),
        database_cpu_pct=pct(DB_BASE + DB_MSG * rate),
    )


ROOMS_EXTRA = 100_000.0  # µs/s the rooms run costs beyond the model


@pytest.fixture
def results():
    return {
        "machine": {"cpu_model": "test", "cores": 2},
        "runs": [
            fanout(100, 50),
            fanout(500, 50),
            fanout(1000, 50),
            fanout(1000, 100),
            send(50),
            send(200),
            run(
                "rooms",
                instances=2,
                rooms=1000,
                members_per_room=5,
                subscribers=5000,
                rate_per_s=200.0,
                deliveries_per_s=1000.0,
                server_cpu_pct=server_pct(200, 1000, ROOMS_EXTRA),
                database_cpu_pct=pct(DB_BASE + DB_MSG * 200),
                redis_cpu_pct=pct(REDIS_BASE + REDIS_MSG * 200 + 8000),
            ),
            run(
                "handshake",
                instances=1,
                server_cpu_ms_per_handshake=3.5,
                handshakes_per_s=280.0,
            ),
            run("idle", instances=1, rss_kib_per_conn=25.0, rss_before_mib=100.0),
            run(
                "storm",
                instances=2,
                stayers=500,
                resumed=2000,
                window_seconds=10.0,
                all_resumed_seconds=8.0,
                published=20,
                # 200 handshakes/s at 500 µs of PostgreSQL and 50 of Redis
                database_cpu_pct=pct(DB_BASE + DB_MSG * 2 + 200 * 500),
                redis_cpu_pct=pct(REDIS_BASE + REDIS_MSG * 2 + 200 * 50),
                server_cpu_pct=60.0,
            ),
            # Another server, a variant and a baseline: never read.
            {**fanout(100, 50), "server": "uvicorn", "server_cpu_pct": 99.0},
            {**fanout(100, 50), "variant": "sse", "server_cpu_pct": 99.0},
            {**fanout(100, 50), "target": "raw", "server_cpu_pct": 99.0},
        ],
    }


def test_derive_finds_the_unit_costs_again(results):
    u = capacity.derive(results)
    assert u.delivery_us == pytest.approx(DELIVERY)
    assert u.message_us == pytest.approx(MESSAGE)
    assert u.process_baseline_us_per_s == pytest.approx(PROCESS)
    assert u.db_message_us == pytest.approx(DB_MSG)
    assert u.db_baseline_us_per_s == pytest.approx(DB_BASE)
    assert u.redis_message_us == pytest.approx(REDIS_MSG)
    assert u.redis_delivery_us == pytest.approx(0.0, abs=1e-9)
    assert u.handshake_us == pytest.approx(3500.0)
    assert u.db_handshake_us == pytest.approx(500.0)
    assert u.redis_handshake_us == pytest.approx(50.0)
    assert u.idle_kib_per_connection == 25.0
    assert u.process_base_mib == 100.0


def test_the_delivery_fit_leaves_out_the_higher_rate(results):
    steps = capacity.fanout_fit_steps(results, "daphne")
    assert {(r["subscribers"], r["rate_per_s"]) for r in steps} == {
        (100, 50),
        (500, 50),
        (1000, 50),
    }


def test_checks_score_held_out_runs(results):
    u = capacity.derive(results)
    by_name = {
        (c.name.split(":")[0], c.quantity): c for c in capacity.checks(results, u)
    }
    # fanout at 100 msg/s was not fitted, and the synthetic costs are exact
    assert by_name[("fanout", "server CPU")].error == pytest.approx(0.0, abs=1e-9)
    # rooms is predicted before its residual is known: short by exactly it
    rooms = by_name[("rooms", "server CPU")]
    assert rooms.measured_pct - rooms.predicted_pct == pytest.approx(pct(ROOMS_EXTRA))
    assert rooms.error < 0
    assert by_name[("rooms (same run)", "PostgreSQL CPU")].error == pytest.approx(0.0)


def test_check_error_is_relative_to_the_measurement():
    assert capacity.Check("x", "cpu", 120.0, 100.0).error == pytest.approx(0.2)
    assert capacity.Check("x", "cpu", 80.0, 100.0).error == pytest.approx(-0.2)


def test_upkeep_is_the_rooms_residual(results):
    u = capacity.with_upkeep(results, capacity.derive(results))
    assert u.upkeep_pair_us_per_s == pytest.approx(ROOMS_EXTRA / 2000)
    assert u.upkeep_connection_us_per_s == pytest.approx(ROOMS_EXTRA / 5000)
    assert u.redis_upkeep_pair_us_per_s == pytest.approx(8000 / 2000)
    # charged whichever way is larger
    assert capacity.upkeep_us(u, pairs=10, connections=1) == pytest.approx(500.0)
    assert capacity.upkeep_us(u, pairs=1, connections=100) == pytest.approx(2000.0)


def test_spans_and_the_receivers_share():
    assert capacity.spans(10, 1) == 1.0
    assert capacity.spans(1, 50) == pytest.approx(1.0)
    assert capacity.spans(1000, 4) == pytest.approx(4.0)
    assert capacity.span_factor(2, 0.1) == pytest.approx(1.0)
    assert capacity.span_factor(12, 0.1) == pytest.approx(2.0)


def test_the_plan_grows_with_the_load(results):
    u = capacity.with_upkeep(results, capacity.derive(results))
    plans = [capacity.plan(u, step) for step in capacity.STEPS]
    counts = [p.instances for p in plans]
    assert counts == sorted(counts)
    assert counts[0] == 2
    assert counts[-1] > 20
    for p in plans:
        assert p.cpu_per_instance <= 0.6 + 1e-9
        assert p.size.startswith("apps-d-1vcpu")  # one process: one vCPU
        assert p.demand.redis_us / p.valkey_shards <= 0.5 * capacity.CORE
    assert plans[-1].valkey_shards > plans[0].valkey_shards


def test_first_bottleneck_names_what_the_old_deployment_cannot_take(results):
    u = capacity.with_upkeep(results, capacity.derive(results))
    small = capacity.Deployment("apps-d-1vcpu-1gb", 2, 1, "db-s-1vcpu-1gb")
    assert capacity.first_bottlenecks(u, capacity.Load(100, 10, 1), small) == []
    over = capacity.first_bottlenecks(
        u, capacity.Load(1_000_000, 100_000, 10_000), small
    )
    names = [name for name, _ in over]
    assert "instance CPU" in names
    assert "Valkey CPU (one thread per shard)" in names
    assert [v for _, v in over] == sorted((v for _, v in over), reverse=True)


def test_markdown_prints_every_table(results):
    text = capacity.markdown(results)
    for heading in ("unit cost", "held-out run", "what sized the instances"):
        assert heading in text
    assert "1,000,000 conns" in text


def test_missing_scenarios_are_named(results):
    results["runs"] = [r for r in results["runs"] if r["scenario"] != "send"]
    with pytest.raises(ValueError, match="send"):
        capacity.derive(results)
