"""A capacity model built from a bench results file (docs/capacity.md).

python -m bench.capacity [bench/results/latest.json]  ->  Markdown on stdout

Every unit cost is derived from the measured records of Switchboard on one
server (Daphne by default), never typed in, so the tables regenerate after
each ``make bench``. CPU is in microseconds of one bench core per second
(1,000,000 = one core busy); ``*_cpu_pct`` fields are percent of one core.

What is derived from what (``derive``):

- delivery: the slope of server CPU against deliveries/s over the ``fanout``
  steps at the lowest message rate (same messages/s, 100 to 1,000
  subscribers);
- stored message and the fixed cost of an idle process: the ``send`` steps,
  their deliveries taken off at the delivery cost, regressed on stored/s
  (slope = per message, intercept / instances = per process). The same
  regression of PostgreSQL's and Redis's CPU gives theirs per message;
- handshake: ``handshake`` (server CPU per handshake, one instance);
  PostgreSQL's and Redis's share of a handshake: ``storm`` (the only run
  that measures them while handshakes dominate);
- idle connection memory: ``idle`` (RSS per connection, RSS before);
- upkeep (presence sweeps and refreshes per room and instance, access
  re-checks per connection): never measured alone. It is whatever the
  ``rooms`` scenario cost beyond the model of the three above, and is
  charged per (room, instance) or per connection, whichever is larger: an
  upper bound, calibrated on the point the first check predicts.

``checks`` predicts runs that no unit cost came from: ``rooms`` (before the
upkeep is fitted to it), the highest-rate ``fanout`` step, and instance A's
CPU during ``storm``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

Run = dict[str, Any]

CORE = 1_000_000.0  # µs of CPU per second: one core

# App Platform sizes (the App Spec's instance_size_slug enum,
# /work/shared/reference: apps-s-* shared, apps-d-* dedicated) that run
# more than one instance. Name, vCPUs, memory in MiB, dedicated.
APP_SIZES: list[tuple[str, int, int, bool]] = [
    ("apps-s-1vcpu-1gb", 1, 1024, False),
    ("apps-s-1vcpu-2gb", 1, 2048, False),
    ("apps-d-1vcpu-1gb", 1, 1024, True),
    ("apps-d-1vcpu-2gb", 1, 2048, True),
    ("apps-d-1vcpu-4gb", 1, 4096, True),
    ("apps-d-2vcpu-4gb", 2, 4096, True),
    ("apps-d-4vcpu-8gb", 4, 8192, True),
]
# Managed database node sizes (DigitalOcean's db-s-* slugs: vCPUs, GiB).
DB_SIZES: list[tuple[str, int, int]] = [
    ("db-s-1vcpu-1gb", 1, 1),
    ("db-s-1vcpu-2gb", 1, 2),
    ("db-s-2vcpu-4gb", 2, 4),
    ("db-s-4vcpu-8gb", 4, 8),
    ("db-s-6vcpu-16gb", 6, 16),
    ("db-s-8vcpu-32gb", 8, 32),
    ("db-s-16vcpu-64gb", 16, 64),
]


@dataclass(frozen=True)
class Assumptions:
    """What the bench cannot tell; every figure of the plan depends on these."""

    # One Daphne process per container (the App Spec's run_command): a
    # process uses one core, so sizes with more vCPUs add only memory.
    processes_per_instance: int = 1
    # A dedicated App Platform vCPU against one core of the bench machine
    # (itself a VM's vCPU); shared vCPUs are throttled when neighbours burst.
    dedicated_vcpu_speed: float = 1.0
    shared_vcpu_speed: float = 0.5
    # Plan every CPU at this share of what it has; scale out at 70 %
    # (docs/operations.md), so a lost instance's clients fit on the rest.
    cpu_target: float = 0.6
    memory_target: float = 0.7
    # Valkey runs commands on one thread: one core per shard, planned at this.
    valkey_core_target: float = 0.5
    # Not measured: Valkey memory per connection (presence entry, its slot,
    # limit keys), an estimate with margin.
    valkey_kib_per_connection: float = 1.0
    # PostgreSQL: a managed vCPU against a bench core (the bench ran
    # fsync=off on loopback; production commits are slower, not costlier in
    # CPU), and its user connections (25 per GiB, 3 reserved: DigitalOcean's
    # connection-pool docs).
    db_vcpu_speed: float = 1.0
    db_cpu_target: float = 0.5
    db_connections_per_gib: int = 25
    db_reserved_connections: int = 3
    db_pool_per_instance: int = 8  # SWITCHBOARD_DB_POOL_SIZE
    # Every connection reconnects on average once this often (sleeping
    # laptops, mobile networks) besides deploys.
    reconnect_every_s: float = 1800.0
    # Bytes a stored message takes in PostgreSQL (row, indexes), for storage.
    stored_message_bytes: int = 600
    min_instances: int = 2
    # Share of a stored message's server CPU that each receiving instance
    # spends (the rest is the sender's: parse, limit, store, publish, ack).
    # Not in the results file; the py-spy profile of ``send`` at 200 msg/s
    # (bench/results/profiles/switchboard-daphne-send.txt) puts the hub's
    # receive loop at 8.5 % of samples against the store's 22 %, most of
    # it the writes to local sockets that ``delivery_us`` already counts.
    receive_share: float = 0.1
    connections_per_process: int = 5000  # SWITCHBOARD_CONNECTIONS_PER_PROCESS


@dataclass(frozen=True)
class Units:
    """Unit costs, µs of one bench core unless named otherwise."""

    server: str
    delivery_us: float
    message_us: float  # stored message, store + publish + receive on 2 instances
    process_baseline_us_per_s: float
    handshake_us: float
    handshakes_per_s_one_instance: float
    idle_kib_per_connection: float
    process_base_mib: float
    db_message_us: float
    db_baseline_us_per_s: float
    db_handshake_us: float
    redis_message_us: float
    redis_delivery_us: float
    redis_baseline_us_per_s: float
    redis_handshake_us: float
    # Upkeep upper bounds (from the rooms residual), and what they came from.
    upkeep_pair_us_per_s: float = 0.0
    upkeep_connection_us_per_s: float = 0.0
    redis_upkeep_pair_us_per_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _runs(results: dict[str, Any], scenario: str, server: str) -> list[Run]:
    return [
        r
        for r in results["runs"]
        if r.get("scenario") == scenario
        and r.get("target") == "switchboard"
        and r.get("server") == server
        and not r.get("variant")
    ]


def _us(pct: float | None) -> float:
    """Percent of one core -> µs of CPU per second."""
    return (pct or 0.0) * CORE / 100.0


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b x: returns (a, b)."""
    if len(points) < 2:
        raise ValueError("need at least two points to fit a line")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("points do not vary")
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def _stored_per_s(run: Run) -> float:
    if run.get("stored_per_s") is not None:
        return float(run["stored_per_s"])
    return float(run["rate_per_s"])


def fanout_fit_steps(results: dict[str, Any], server: str) -> list[Run]:
    """The fanout steps at the lowest message rate: the delivery fit's."""
    steps = _runs(results, "fanout", server)
    if not steps:
        raise ValueError(f"no fanout runs for switchboard/{server}")
    low = min(r["rate_per_s"] for r in steps)
    return [r for r in steps if r["rate_per_s"] == low]


def derive(results: dict[str, Any], server: str = "daphne") -> Units:
    notes: list[str] = []
    fit = fanout_fit_steps(results, server)
    _, delivery_us = _fit(
        [(r["deliveries_per_s"], _us(r["server_cpu_pct"])) for r in fit]
    )
    _, redis_delivery_us = _fit(
        [(r["deliveries_per_s"], _us(r.get("redis_cpu_pct"))) for r in fit]
    )
    if redis_delivery_us < 0:
        notes.append(
            f"Redis CPU per delivery fitted {redis_delivery_us:.2f} µs: none "
            "measurable (one publish per message and process), taken as 0"
        )
        redis_delivery_us = 0.0

    sends = _runs(results, "send", server)
    if len(sends) < 2:
        raise ValueError(f"need two send runs for switchboard/{server}")
    instances = sends[0]["instances"]
    base, message_us = _fit(
        [
            (
                _stored_per_s(r),
                _us(r["server_cpu_pct"]) - delivery_us * r["deliveries_per_s"],
            )
            for r in sends
        ]
    )
    db_base, db_message_us = _fit(
        [(_stored_per_s(r), _us(r.get("database_cpu_pct"))) for r in sends]
    )
    redis_base, redis_message_us = _fit(
        [(_stored_per_s(r), _us(r.get("redis_cpu_pct"))) for r in sends]
    )

    (hs,) = _runs(results, "handshake", server)[:1] or [None]
    if hs is None:
        raise ValueError(f"no handshake run for switchboard/{server}")
    (idle,) = _runs(results, "idle", server)[:1] or [None]
    if idle is None:
        raise ValueError(f"no idle run for switchboard/{server}")

    db_handshake_us = redis_handshake_us = 0.0
    storms = _runs(results, "storm", server)
    if storms and storms[0].get("resumed"):
        st = storms[0]
        seconds = st["window_seconds"]
        per_s = st["resumed"] / seconds
        msgs = st["published"] / seconds
        db_handshake_us = max(
            0.0,
            (_us(st.get("database_cpu_pct")) - db_base - db_message_us * msgs) / per_s,
        )
        redis_handshake_us = max(
            0.0,
            (_us(st.get("redis_cpu_pct")) - redis_base - redis_message_us * msgs)
            / per_s,
        )
    else:
        notes.append("no storm run: PostgreSQL and Redis per handshake unknown (0)")

    return Units(
        server=server,
        delivery_us=delivery_us,
        message_us=message_us,
        process_baseline_us_per_s=base / instances,
        handshake_us=hs["server_cpu_ms_per_handshake"] * 1000.0,
        handshakes_per_s_one_instance=hs["handshakes_per_s"],
        idle_kib_per_connection=idle["rss_kib_per_conn"],
        process_base_mib=idle["rss_before_mib"],
        db_message_us=db_message_us,
        db_baseline_us_per_s=db_base,
        db_handshake_us=db_handshake_us,
        redis_message_us=redis_message_us,
        redis_delivery_us=redis_delivery_us,
        redis_baseline_us_per_s=redis_base,
        redis_handshake_us=redis_handshake_us,
        notes=notes,
    )


# -- predicting a measured run ------------------------------------------------


def predict_server_us(
    u: Units,
    *,
    instances: int,
    messages_per_s: float,
    deliveries_per_s: float,
    handshakes_per_s: float = 0.0,
    pairs: float = 0.0,
    connections: float = 0.0,
    spans: float = 2.0,
    receive_share: float = 0.1,
) -> float:
    """Server CPU (µs/s, all instances) for a load, by the unit costs.

    ``spans``: instances each message reaches; ``message_us`` was measured
    with 2 (see ``span_factor``).
    """
    return (
        u.process_baseline_us_per_s * instances
        + u.message_us * messages_per_s * span_factor(spans, receive_share)
        + u.delivery_us * deliveries_per_s
        + u.handshake_us * handshakes_per_s
        + upkeep_us(u, pairs=pairs, connections=connections)
    )


def span_factor(spans: float, receive_share: float) -> float:
    """A stored message's cost reaching ``spans`` instances, relative to the
    measured one (2): the sender's part once, each receiver's share per
    instance."""
    return 1.0 + receive_share * (spans - 2.0)


def upkeep_us(u: Units, *, pairs: float, connections: float) -> float:
    return max(
        u.upkeep_pair_us_per_s * pairs, u.upkeep_connection_us_per_s * connections
    )


@dataclass(frozen=True)
class Check:
    name: str
    quantity: str
    predicted_pct: float
    measured_pct: float

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted_pct - self.measured_pct) / self.measured_pct


def _rooms_run(results: dict[str, Any], server: str) -> Run:
    rooms = _runs(results, "rooms", server)
    if not rooms:
        raise ValueError(f"no rooms run for switchboard/{server}")
    return rooms[0]


def checks(results: dict[str, Any], u: Units) -> list[Check]:
    """Predictions of runs no unit cost came from (upkeep left at zero for
    ``rooms``: it is fitted to that run afterwards)."""
    bare = replace(u, upkeep_pair_us_per_s=0.0, upkeep_connection_us_per_s=0.0)
    out: list[Check] = []
    r = _rooms_run(results, u.server)
    msgs = _stored_per_s(r)
    out.append(
        Check(
            f"rooms: {r['rooms']:,} rooms x {r['members_per_room']}, "
            f"{msgs:g} msg/s, {r['instances']} instances",
            "server CPU",
            predict_server_us(
                bare,
                instances=r["instances"],
                messages_per_s=msgs,
                deliveries_per_s=r["deliveries_per_s"],
            )
            / CORE
            * 100,
            r["server_cpu_pct"],
        )
    )
    out.append(
        Check(
            "rooms (same run)",
            "PostgreSQL CPU",
            (u.db_baseline_us_per_s + u.db_message_us * msgs) / CORE * 100,
            r["database_cpu_pct"],
        )
    )
    out.append(
        Check(
            "rooms (same run)",
            "Redis CPU",
            (u.redis_baseline_us_per_s + u.redis_message_us * msgs) / CORE * 100,
            r["redis_cpu_pct"],
        )
    )
    fit_rate = fanout_fit_steps(results, u.server)[0]["rate_per_s"]
    for f in _runs(results, "fanout", u.server):
        if f["rate_per_s"] == fit_rate:
            continue
        out.append(
            Check(
                f"fanout: {f['subscribers']:,} subscribers x "
                f"{f['rate_per_s']:g} msg/s, {f['instances']} instances",
                "server CPU",
                predict_server_us(
                    u,
                    instances=f["instances"],
                    messages_per_s=f["rate_per_s"],
                    deliveries_per_s=f["deliveries_per_s"],
                    pairs=f["instances"],
                    connections=f["subscribers"],
                )
                / CORE
                * 100,
                f["server_cpu_pct"],
            )
        )
    storms = _runs(results, "storm", u.server)
    if storms and storms[0].get("resumed"):
        st = storms[0]
        seconds = st["window_seconds"]
        msgs = st["published"] / seconds
        # Instance A: its stayers throughout, the movers as they arrive
        # (about half of them on average over the window).
        conns = st["stayers"] + st["resumed"] / 2
        out.append(
            Check(
                f"storm: {st['resumed']:,} movers resume on one instance "
                f"in {st['all_resumed_seconds']:g} s",
                "instance A's CPU",
                predict_server_us(
                    u,
                    instances=1,
                    messages_per_s=msgs,
                    deliveries_per_s=msgs * conns,
                    handshakes_per_s=st["resumed"] / seconds,
                    pairs=1,
                    connections=conns,
                    spans=1,
                )
                / CORE
                * 100,
                st["server_cpu_pct"],
            )
        )
    return out


def with_upkeep(results: dict[str, Any], u: Units) -> Units:
    """Fit the upkeep bounds to what ``rooms`` cost beyond the model."""
    r = _rooms_run(results, u.server)
    msgs = _stored_per_s(r)
    residual = _us(r["server_cpu_pct"]) - predict_server_us(
        u,
        instances=r["instances"],
        messages_per_s=msgs,
        deliveries_per_s=r["deliveries_per_s"],
    )
    redis_residual = _us(r.get("redis_cpu_pct")) - (
        u.redis_baseline_us_per_s + u.redis_message_us * msgs
    )
    # Each room of the bench spans every instance.
    pairs = r["rooms"] * r["instances"]
    return replace(
        u,
        upkeep_pair_us_per_s=max(0.0, residual) / pairs,
        upkeep_connection_us_per_s=max(0.0, residual) / r["subscribers"],
        redis_upkeep_pair_us_per_s=max(0.0, redis_residual) / pairs,
    )


# -- the plan ----------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    users: int
    rooms: int
    messages_per_s: float
    connections_per_user: float = 1.0

    @property
    def connections(self) -> float:
        return self.users * self.connections_per_user

    @property
    def members(self) -> float:
        """Connections per room (rooms of equal size: real rooms are not)."""
        return self.connections / self.rooms

    @property
    def deliveries_per_s(self) -> float:
        return self.messages_per_s * self.members


STEPS = [
    Load(1_000, 100, 10),
    Load(10_000, 1_000, 100),
    Load(100_000, 10_000, 1_000),
    Load(1_000_000, 100_000, 10_000),
]


def spans(members: float, instances: int) -> float:
    """Expected instances a room's members are spread over (placed at random)."""
    if instances <= 1:
        return 1.0
    return instances * (1.0 - (1.0 - 1.0 / instances) ** members)


@dataclass(frozen=True)
class Demand:
    server_us: float
    terms: dict[str, float]
    db_us: float
    redis_us: float
    handshakes_per_s: float
    spans: float


def demand(u: Units, load: Load, instances: int, a: Assumptions) -> Demand:
    s = spans(load.members, instances)
    pairs = load.rooms * s
    hs = load.connections / a.reconnect_every_s
    terms = {
        "fixed per process": u.process_baseline_us_per_s
        * instances
        * a.processes_per_instance,
        "stored messages": u.message_us
        * load.messages_per_s
        * span_factor(s, a.receive_share),
        "deliveries": u.delivery_us * load.deliveries_per_s,
        "handshakes": u.handshake_us * hs,
        "upkeep (presence, re-checks)": upkeep_us(
            u, pairs=pairs, connections=load.connections
        ),
    }
    db = (
        u.db_baseline_us_per_s
        + u.db_message_us * load.messages_per_s
        + u.db_handshake_us * hs
    )
    redis = (
        u.redis_baseline_us_per_s
        + u.redis_message_us * load.messages_per_s * span_factor(s, a.receive_share)
        + u.redis_delivery_us * load.deliveries_per_s
        + u.redis_handshake_us * hs
        + u.redis_upkeep_pair_us_per_s * pairs
    )
    return Demand(sum(terms.values()), terms, db, redis, hs, s)


def _instance_memory_mib(u: Units, conns_per_instance: float) -> float:
    return u.process_base_mib + conns_per_instance * u.idle_kib_per_connection / 1024


@dataclass(frozen=True)
class Plan:
    load: Load
    size: str
    instances: int
    bound_by: str  # "CPU" or "memory" or "minimum"
    demand: Demand
    cpu_per_instance: float  # share of one instance's usable CPU
    memory_mib_per_instance: float
    valkey_shards: int
    valkey_size: str
    db_size: str
    db_cpu: float  # share of the node's CPU
    db_connections: int
    db_connection_limit: int
    storage_gib_per_day: float
    connections_setting: int  # SWITCHBOARD_CONNECTIONS_PER_PROCESS to set


def _speed(size: tuple[str, int, int, bool], a: Assumptions) -> float:
    _, vcpus, _, dedicated = size
    per = a.dedicated_vcpu_speed if dedicated else a.shared_vcpu_speed
    return min(vcpus, a.processes_per_instance) * per


def plan(u: Units, load: Load, a: Assumptions = Assumptions()) -> Plan:
    """The fewest instances of the cheapest fitting 1-process size."""
    best: Plan | None = None
    for size in APP_SIZES:
        name, _, mem_mib, _ = size
        if a.processes_per_instance == 1 and size[1] > 1:
            continue  # more vCPUs than processes: memory only, never cheaper
        usable = _speed(size, a) * CORE * a.cpu_target
        n = a.min_instances
        while True:
            d = demand(u, load, n, a)
            # While one instance is replaced, the rest hold its clients too.
            conns = load.connections / max(1, n - 1)
            mem = _instance_memory_mib(u, conns)
            cpu_ok = d.server_us / n <= usable
            mem_ok = mem <= mem_mib * a.memory_target
            if cpu_ok and mem_ok:
                break
            n += 1
            if n > 100_000:
                raise ValueError("no plan under 100,000 instances")
        bound = "minimum"
        if n > a.min_instances:
            prev = demand(u, load, n - 1, a)
            prev_mem = _instance_memory_mib(u, load.connections / max(1, n - 2))
            bound = "CPU" if prev.server_us / (n - 1) > usable else "memory"
            if bound == "memory" and prev_mem <= mem_mib * a.memory_target:
                bound = "CPU"
        candidate = _with_backends(
            u, load, a, name, n, bound, d, d.server_us / n / usable * a.cpu_target, mem
        )
        # Prefer dedicated vCPUs (autoscaling needs them; shared ones are
        # throttled), then fewer instances, then less memory.
        key = (not size[3], n, mem_mib)
        if best is None or key < _key(best):
            best = candidate
    assert best is not None
    return best


def _key(p: Plan) -> tuple[bool, int, int]:
    size = next(s for s in APP_SIZES if s[0] == p.size)
    return (not size[3], p.instances, size[2])


def _with_backends(
    u: Units,
    load: Load,
    a: Assumptions,
    size: str,
    n: int,
    bound: str,
    d: Demand,
    cpu_share: float,
    mem: float,
) -> Plan:
    shards = max(1, math.ceil(d.redis_us / (CORE * a.valkey_core_target)))
    valkey_gib = load.connections * a.valkey_kib_per_connection / 2**20 / shards
    valkey_size = next(
        (s for s, _, gib in DB_SIZES if valkey_gib <= gib * a.memory_target),
        DB_SIZES[-1][0],
    )
    conns = n * a.db_pool_per_instance + 2  # + the migrate job and a console
    db_size, db_cpu, limit = DB_SIZES[-1][0], math.inf, 0
    for name, vcpus, gib in DB_SIZES:
        share = d.db_us / (vcpus * a.db_vcpu_speed * CORE)
        if share <= a.db_cpu_target:
            db_size, db_cpu = name, share
            limit = gib * a.db_connections_per_gib - a.db_reserved_connections
            break
    else:
        vcpus, gib = DB_SIZES[-1][1], DB_SIZES[-1][2]
        db_cpu = d.db_us / (vcpus * a.db_vcpu_speed * CORE)
        limit = gib * a.db_connections_per_gib - a.db_reserved_connections
    storage = load.messages_per_s * 86400 * a.stored_message_bytes / 2**30
    return Plan(
        load=load,
        size=size,
        instances=n,
        bound_by=bound,
        demand=d,
        cpu_per_instance=cpu_share,
        memory_mib_per_instance=mem,
        valkey_shards=shards,
        valkey_size=valkey_size,
        db_size=db_size,
        db_cpu=db_cpu,
        db_connections=conns,
        db_connection_limit=limit,
        storage_gib_per_day=storage,
        connections_setting=max(
            a.connections_per_process,
            math.ceil(load.connections / max(1, n - 1) / 500) * 500,
        ),
    )


@dataclass(frozen=True)
class Deployment:
    size: str
    instances: int
    valkey_shards: int
    db_size: str
    connections_setting: int = 5000


# What the App Spec ships (.do/app.yaml, docs/deploy.md): the start line.
SHIPPED = Deployment("apps-s-1vcpu-1gb", 2, 1, "db-s-1vcpu-1gb")


def deployment(p: Plan) -> Deployment:
    return Deployment(
        p.size, p.instances, p.valkey_shards, p.db_size, p.connections_setting
    )


def utilization(
    u: Units, load: Load, dep: Deployment, a: Assumptions = Assumptions()
) -> dict[str, float]:
    """Each limit's use by ``load`` on ``dep``: 1.0 = at its planned limit
    (the CPU and memory targets, the connection settings and limits)."""
    size = next(s for s in APP_SIZES if s[0] == dep.size)
    _, db_vcpus, db_gib = next(s for s in DB_SIZES if s[0] == dep.db_size)
    d = demand(u, load, dep.instances, a)
    # Memory and the connection cap are checked with one instance gone.
    conns = load.connections / max(1, dep.instances - 1)
    usable = _speed(size, a) * CORE * a.cpu_target
    db_limit = db_gib * a.db_connections_per_gib - a.db_reserved_connections
    return {
        "instance CPU": d.server_us / dep.instances / usable,
        "instance memory": _instance_memory_mib(u, conns) / (size[2] * a.memory_target),
        "connections per process (setting)": conns / dep.connections_setting,
        "Valkey CPU (one thread per shard)": d.redis_us
        / dep.valkey_shards
        / (CORE * a.valkey_core_target),
        "PostgreSQL CPU": d.db_us
        / (db_vcpus * a.db_vcpu_speed * CORE)
        / a.db_cpu_target,
        "PostgreSQL connections": (dep.instances * a.db_pool_per_instance + 2)
        / db_limit,
    }


def first_bottlenecks(
    u: Units, load: Load, before: Deployment, a: Assumptions = Assumptions()
) -> list[tuple[str, float]]:
    """The limits ``load`` exceeds on the deployment before it, worst first."""
    use = utilization(u, load, before, a)
    return sorted(((k, v) for k, v in use.items() if v > 1.0), key=lambda kv: -kv[1])


def bottleneck(p: Plan) -> str:
    """The largest CPU term of the instances, or what bound them."""
    if p.bound_by == "memory":
        return "instance memory (idle connections)"
    if p.bound_by == "minimum":
        return "none: the minimum of 2 instances has room to spare"
    term = max(p.demand.terms, key=lambda k: p.demand.terms[k])
    return f"instance CPU: {term}"


# -- Markdown ------------------------------------------------------------------


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |"]
    out.append("| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def units_table(u: Units) -> list[str]:
    rows = [
        ["server CPU per delivery", f"{_n(u.delivery_us, 1)} µs", "fanout slope"],
        [
            "server CPU per stored message (2 instances receive it)",
            f"{_n(u.message_us)} µs",
            "send slope",
        ],
        [
            "server CPU of a process, fixed",
            f"{_n(u.process_baseline_us_per_s / 1e3)} ms/s",
            "send intercept",
        ],
        ["server CPU per handshake", f"{_n(u.handshake_us)} µs", "handshake"],
        [
            "handshakes/s, one instance (24 at a time)",
            _n(u.handshakes_per_s_one_instance),
            "handshake",
        ],
        [
            "memory per idle connection",
            f"{_n(u.idle_kib_per_connection, 1)} KiB",
            "idle",
        ],
        ["memory of a process, before", f"{_n(u.process_base_mib)} MiB", "idle"],
        ["PostgreSQL CPU per stored message", f"{_n(u.db_message_us)} µs", "send"],
        [
            "PostgreSQL CPU, fixed",
            f"{_n(u.db_baseline_us_per_s / 1e3)} ms/s",
            "send intercept",
        ],
        ["PostgreSQL CPU per handshake", f"{_n(u.db_handshake_us)} µs", "storm"],
        ["Redis CPU per stored message", f"{_n(u.redis_message_us, 1)} µs", "send"],
        ["Redis CPU per delivery", f"{_n(u.redis_delivery_us, 2)} µs", "fanout"],
        ["Redis CPU per handshake", f"{_n(u.redis_handshake_us)} µs", "storm"],
        [
            "upkeep per (room, instance), upper bound",
            f"{_n(u.upkeep_pair_us_per_s)} µs/s",
            "rooms residual",
        ],
        [
            "… or per connection, upper bound",
            f"{_n(u.upkeep_connection_us_per_s, 1)} µs/s",
            "rooms residual",
        ],
        [
            "Redis upkeep per (room, instance), upper bound",
            f"{_n(u.redis_upkeep_pair_us_per_s, 1)} µs/s",
            "rooms residual",
        ],
    ]
    return _table(["unit cost (one bench core)", "value", "from"], rows)


def checks_table(cs: list[Check]) -> list[str]:
    rows = [
        [
            c.name,
            c.quantity,
            f"{c.predicted_pct:.1f} %",
            f"{c.measured_pct:.1f} %",
            f"{c.error * 100:+.0f} %",
        ]
        for c in cs
    ]
    return _table(["held-out run", "quantity", "predicted", "measured", "error"], rows)


def plans_table(plans: list[Plan]) -> list[str]:
    rows = []
    for p in plans:
        l_ = p.load
        rows.append(
            [
                f"{_n(l_.connections)} conns, {_n(l_.rooms)} rooms "
                f"(~{_n(l_.members)} each), {_n(l_.messages_per_s)} msg/s",
                _n(l_.deliveries_per_s),
                f"{p.instances} x `{p.size}`",
                f"{p.cpu_per_instance * 100:.0f} %",
                f"{_n(p.memory_mib_per_instance)} MiB",
                f"{p.valkey_shards} x `{p.valkey_size}` "
                f"({p.demand.redis_us / CORE / p.valkey_shards * 100:.0f} % of a core)",
                f"`{p.db_size}` ({p.db_cpu * 100:.0f} %)",
                _n(p.connections_setting),
                f"{p.db_connections} / {p.db_connection_limit}",
                bottleneck(p),
            ]
        )
    return _table(
        [
            "load",
            "deliveries/s",
            "instances",
            "CPU each",
            "RSS each, one instance gone",
            "Valkey",
            "PostgreSQL (CPU)",
            "connections per process",
            "PG conns / limit",
            "what sized the instances",
        ],
        rows,
    )


def terms_table(plans: list[Plan]) -> list[str]:
    names = list(plans[0].demand.terms)
    rows = [
        [name] + [f"{p.demand.terms[name] / CORE:.2f}" for p in plans] for name in names
    ]
    rows.append(
        ["total (bench cores)"] + [f"{p.demand.server_us / CORE:.2f}" for p in plans]
    )
    return _table(
        ["server CPU, bench cores"] + [_n(p.load.connections) for p in plans], rows
    )


def bottlenecks_table(u: Units, plans: list[Plan]) -> list[str]:
    rows = []
    before = SHIPPED
    for p in plans:
        over = first_bottlenecks(u, p.load, before)
        rows.append(
            [
                _n(p.load.connections),
                f"{before.instances} x `{before.size}`, "
                f"{before.valkey_shards} Valkey, `{before.db_size}`",
                "; ".join(f"{k} {v * 100:.0f} %" for k, v in over) or "nothing",
            ]
        )
        before = deployment(p)
    return _table(
        ["step", "the deployment before it", "limits it exceeds (of planned)"],
        rows,
    )


def markdown(results: dict[str, Any], server: str = "daphne") -> str:
    u = derive(results, server)
    cs = checks(results, u)
    u = with_upkeep(results, u)
    plans = [plan(u, step) for step in STEPS]
    m = results.get("machine", {})
    lines = [
        f"Unit costs of switchboard/{server}, from a run on "
        f"{m.get('cpu_model', '?')} ({m.get('cores', '?')} cores):",
        "",
        *units_table(u),
        *(f"- {note}" for note in u.notes),
        *([""] if u.notes else []),
        "Checks (runs no unit cost came from):",
        "",
        *checks_table(cs),
        "Plans:",
        "",
        *plans_table(plans),
        "Each step's load on the deployment of the step before (the first, on"
        " the App Spec as shipped): what breaks first.",
        "",
        *bottlenecks_table(u, plans),
        "Where the instances' CPU goes:",
        "",
        *terms_table(plans),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else Path(__file__).parent / "results" / "latest.json"
    print(markdown(load(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
