"""The scenarios: what to connect, what to send, and the run records made.

Each function drives one stack through the load generator and returns run
records in the shape of ``bench/results/latest.json`` (see ``records``).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import config, environment, profiling
from bench.config import Plan
from bench.driver import LoadGenerator
from bench.records import (
    delivery_record,
    handshake_record,
    idle_record,
    storm_record,
)
from bench.targets import (
    HANDSHAKE_MESSAGES,
    HANDSHAKE_SLUG,
    LIST_LAYER,
    ROOMS_SLUG,
    Infrastructure,
    Stack,
    create_room_via_api,
    redis_connections_per_process,
)
from harness.app import AppProcess
from harness.process import ServiceFailed


@dataclass
class Session:
    """One stack, its load generator, and what the run needs around them."""

    infra: Infrastructure
    stack: Stack
    gen: LoadGenerator
    plan: Plan
    results_dir: Path
    steps: itertools.count
    profile: bool = False
    notes: list[str] = field(default_factory=list)

    def base(self, scenario: str) -> dict[str, Any]:
        return {
            "scenario": scenario,
            "target": self.stack.target,
            "server": self.stack.server,
            "variant": self.stack.variant,
            "instances": len(self.stack.processes),
        }

    def room_path(self, name: str) -> str:
        return f"/ws/rooms/{name}/"

    def connect(
        self,
        group: str,
        specs: list[list[Any]],
        *,
        budget: float,
        deflate: bool = False,
        greeting_marker: str | None = None,
    ) -> dict[str, Any]:
        """Open connections ``[instance, room, path, header index]``.

        Handshakes stop starting after ``budget`` seconds, so a server that
        accepts connections slowly cannot stretch the run; what was skipped
        is noted and shows in the records' subscriber counts. With
        ``greeting_marker``, a connection counts once a frame holding it
        arrived rather than on its first frame (``Generator.connect``).
        """
        reply = self.gen.call(
            "connect",
            timeout=budget + 2 * config.HANDSHAKE_SECONDS + 30,
            group=group,
            instances=self.stack.instances,
            conns=specs,
            headers=self.stack.headers,
            concurrency=config.CONNECT_CONCURRENCY,
            handshake_seconds=config.HANDSHAKE_SECONDS,
            wait_greeting=self.stack.wait_greeting,
            budget_seconds=budget,
            deflate=deflate,
            greeting_marker=greeting_marker,
        )
        if reply["failed"] or reply["skipped"]:
            self.notes.append(
                f"{self.stack.label} {group}: {reply['connected']} of {len(specs)} "
                f"connected in {reply['seconds']:g} s (budget {budget:g} s); "
                f"{reply['errors']}"
            )
        return reply

    def measure(self, group: str, streams: list[list[Any]]) -> dict[str, Any]:
        """Run one measured step on ``group``; see ``Generator.measure``."""
        plan = self.plan
        self.stack.check_alive()
        total = (
            plan.warmup_seconds
            + plan.window_seconds
            + plan.tail_seconds
            + plan.drain_seconds
            + plan.settle_seconds
        )
        result = self.gen.call(
            "measure",
            timeout=total + 60,
            group=group,
            step=next(self.steps),
            streams=streams,
            warmup=plan.warmup_seconds,
            window=plan.window_seconds,
            tail=plan.tail_seconds,
            drain=plan.drain_seconds,
            settle=plan.settle_seconds,
            pids=self.stack.pids,
            redis_pid=self.infra.redis_pid(),
            db_pid=self.infra.postgres_pid() if self.stack.client_ids else None,
            client_ids=self.stack.client_ids,
        )
        self.stack.check_alive()
        return result

    def close(self, group: str) -> None:
        self.gen.call("close", timeout=60, group=group, wait_seconds=20)
        environment.wait_quiet(self.stack.pids)

    def header_index(self, position: int) -> int:
        return position % len(self.stack.headers)


def publisher_streams(rate: float, publishers: int) -> list[list[Any]]:
    """``publishers`` streams sharing ``rate``, evenly staggered."""
    return [[i, rate / publishers, i / rate] for i in range(publishers)]


def publishers_for(rate: float) -> int:
    return max(1, math.ceil(rate / config.PER_CONNECTION_RATE))


# --- idle ---------------------------------------------------------------------


def run_idle(session: Session) -> list[dict[str, Any]]:
    """Idle connections on instance 0: RSS per connection, all kept open."""
    plan = session.plan
    stack = session.stack
    pid = stack.pids[0]
    path = session.room_path(_room_for(session, "idle"))
    warm = plan.idle_warm_connections
    specs = [
        [0, 0, path, session.header_index(i)] for i in range(plan.idle_connections)
    ]
    first = session.connect("idle", specs[:warm], budget=plan.idle_connect_seconds)
    time.sleep(1.0)
    environment.wait_quiet([pid], limit=10)
    rss_before = psutil.Process(pid).memory_info().rss
    started = time.monotonic()
    rest = session.connect("idle", specs[warm:], budget=plan.idle_connect_seconds)
    connect_seconds = time.monotonic() - started
    environment.wait_quiet([pid], limit=15)
    rss_after = psutil.Process(pid).memory_info().rss
    time.sleep(plan.idle_hold_seconds)
    counted = session.gen.call("count", timeout=30, group="idle")
    session.close("idle")
    return [
        idle_record(
            session.base("idle"),
            connections=counted["open"],
            attempted=plan.idle_connections,
            measured=rest["connected"],
            rss_before=rss_before,
            rss_after=rss_after,
            connect_seconds=connect_seconds,
            errors={**first["errors"], **rest["errors"]},
            close_codes=counted["close_codes"],
        )
    ]


def _room_for(session: Session, scenario: str) -> str:
    """A room for one scenario; Switchboard's is created through the API."""
    stack = session.stack
    if stack.target != "switchboard":
        return scenario
    variant = {"asyncio loop": "-asyncio", LIST_LAYER: "-lists"}.get(stack.variant, "")
    suffix = stack.server + variant
    slug = f"{scenario}-{suffix}"
    create_room_via_api(stack, session.infra.tokens[0], slug, f"Bench {slug}")
    return slug


# --- handshake ----------------------------------------------------------------

# Switchboard's greeting ends with presence (docs/protocol.md); the server's
# json.dumps keeps the default separators.
PRESENCE_MARKER = '"type": "presence"'


def run_handshake(session: Session) -> list[dict[str, Any]]:
    """Handshakes/s and server CPU per handshake on instance 0.

    A Switchboard handshake does what a returning member's does: token auth,
    access to a private room, a replay of ``HANDSHAKE_REPLAY`` stored
    messages (``?after=``) and presence; it is done when presence arrives.
    The baselines join their room as in idle. All are kept open until the
    group closes, so the servers hold more and more connections meanwhile.
    """
    plan = session.plan
    stack = session.stack
    if stack.target == "switchboard":
        after = HANDSHAKE_MESSAGES - config.HANDSHAKE_REPLAY
        path = f"{session.room_path(HANDSHAKE_SLUG)}?after={after}"
        replay, marker = config.HANDSHAKE_REPLAY, PRESENCE_MARKER
    else:
        path = session.room_path(_room_for(session, "handshake"))
        replay, marker = 0, None
    specs = [
        [0, 0, path, session.header_index(i)] for i in range(plan.handshake_connections)
    ]
    server = psutil.Process(stack.pids[0])
    environment.wait_quiet([server.pid], limit=10)
    cpu_before = server.cpu_times()
    reply = session.connect(
        "handshake",
        specs,
        budget=plan.handshake_connect_seconds,
        greeting_marker=marker,
    )
    cpu_after = server.cpu_times()
    counted = session.gen.call("count", timeout=30, group="handshake")
    session.close("handshake")
    cpu_seconds = (cpu_after.user + cpu_after.system) - (
        cpu_before.user + cpu_before.system
    )
    # No message is sent meanwhile: every message frame before presence is
    # a replayed one.
    mismatches = sum(
        connections
        for got, connections in reply["greeting_messages"].items()
        if int(got) != replay
    )
    return [
        handshake_record(
            session.base("handshake"),
            connections=reply["connected"],
            attempted=plan.handshake_connections,
            open_after=counted["open"],
            connect_seconds=reply["seconds"],
            server_cpu_seconds=cpu_seconds,
            replayed=replay,
            replay_mismatches=mismatches,
            errors=reply["errors"],
            close_codes=counted["close_codes"],
        )
    ]


# --- fanout -------------------------------------------------------------------


def run_fanout(
    session: Session,
    steps: tuple[tuple[int, int], ...] | None = None,
    *,
    deflate: bool = False,
    sse: bool = False,
    watch: bool = False,
) -> list[dict[str, Any]]:
    """One room; subscribers grow step by step over both instances.

    With ``sse``, every subscriber but the publishers (sockets: a stream
    cannot send) reads a Server-Sent Events stream instead. With ``watch``,
    they sit in another room and watch this one among every room their user
    can see (``?watch=1``): each message reaches them as an ``activity``
    frame, what a rooms sidebar's unread counts cost.

    A step the servers could not keep up with leaves a backlog (layer
    queues, write buffers) that would load the next step; if the connect
    budget allows, the subscribers are then closed and connected afresh.
    """
    plan = session.plan
    steps = steps or plan.fanout_steps
    group = (
        "fanout-deflate"
        if deflate
        else "fanout-sse"
        if sse
        else "fanout-watch"
        if watch
        else "fanout"
    )
    room = _room_for(session, "fanout")
    path = session.room_path(room)
    if watch:
        # Every watcher in one other room: the fanout room's messages reach
        # it only through the hub's watchers.
        home = _room_for(session, "watch-home")
        other_path = session.room_path(home) + "?watch=1"
    else:
        other_path = f"/sse/rooms/{room}/"
    sockets = publishers_for(max(rate for _, rate in steps)) if sse or watch else None
    instances = len(session.stack.processes)
    pool = _ConnectPool(plan.fanout_connect_seconds)

    def join(first: int, last: int) -> int:
        specs = [
            [
                i % instances,
                0,
                other_path if sockets is not None and i >= sockets else path,
                session.header_index(i),
            ]
            for i in range(first, last)
        ]
        reply = session.connect(group, specs, budget=pool.left, deflate=deflate)
        pool.spend(reply)
        return reply["group_size"]

    # Profiled: the largest step at 50 msg/s (fanout 1000 in a full run).
    profile_at = max((step for step in steps if step[1] == 50), default=None)
    requested = connected = 0
    backlog = False
    records = []
    for index, (subscribers, rate) in enumerate(steps):
        if subscribers > requested:
            connected = join(requested, subscribers)
            requested = subscribers
        publishers = publishers_for(rate)
        streams = publisher_streams(rate, publishers)
        result = session.measure(group, streams)
        base = session.base("fanout") | {
            "publishers": publishers,
            "planned_subscribers": subscribers,
            "after_backlog": backlog,
        }
        if deflate:
            base["variant"] = "permessage-deflate"
        if sse:
            base["variant"] = "sse"
        if watch:
            base["variant"] = "watch"
        records.append(
            delivery_record(base, result, rate=rate, offered=rate * connected)
        )
        if (
            session.profile
            and (subscribers, rate) == profile_at
            and not (deflate or sse or watch)
        ):
            records[-1]["profile"] = _profile(session, group, streams)
        backlog = not result["settled"]
        if backlog and index + 1 < len(steps) and pool.affords(requested):
            session.close(group)
            connected = join(0, requested)
            backlog = False
    session.close(group)
    return records


class _ConnectPool:
    """Seconds left for handshakes, and how fast they have been going."""

    def __init__(self, seconds: float) -> None:
        self.left_seconds = seconds
        self.per_second: float | None = None

    @property
    def left(self) -> float:
        return max(self.left_seconds, 1.0)

    def spend(self, reply: dict[str, Any]) -> None:
        self.left_seconds -= reply["seconds"]
        if reply["connected"] and reply["seconds"] > 0:
            self.per_second = reply["connected"] / reply["seconds"]

    def affords(self, connections: int) -> bool:
        if not self.per_second:
            return False
        return connections / self.per_second < self.left_seconds


def _profile(
    session: Session, group: str, streams: list[list[Any]], suffix: str = ""
) -> str:
    """Sample instance 0 with py-spy during one more step at the same load.

    The raw stacks stay with the logs; the summary goes to
    ``<results>/profiles/<target>-<server><suffix>.txt``.
    """
    stack = session.stack
    variant = f"-{stack.variant.replace(' ', '-')}" if stack.variant else ""
    name = f"{stack.target}-{stack.server}{variant}{suffix}"
    raw = session.infra.log_dir / f"py-spy-{name}.txt"
    seconds = int(session.plan.warmup_seconds + session.plan.window_seconds)
    with profiling.record(stack.pids[0], seconds, raw) as done:
        session.measure(group, streams)
    if not done():
        return f"py-spy failed; see {raw.with_suffix('.log')}"
    summary = profiling.summarize(raw)
    directory = session.results_dir / "profiles"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.txt").write_text(summary)
    return summary


# --- rooms ----------------------------------------------------------------------


def run_rooms(session: Session) -> list[dict[str, Any]]:
    """Many small rooms spanning both instances, each sent to now and then."""
    plan = session.plan
    stack = session.stack
    instances = len(stack.processes)
    rng = random.Random(config.SEED)
    specs = []
    for room in range(plan.rooms):
        path = session.room_path(ROOMS_SLUG.format(room))
        for member in range(plan.room_members):
            position = room * plan.room_members + member
            specs.append(
                [
                    (room + member) % instances,
                    room,
                    path,
                    session.header_index(position),
                ]
            )
    reply = session.connect("rooms", specs, budget=plan.rooms_connect_seconds)
    # The group holds only the connections that joined: the first joined
    # member of each room sends to it.
    rate = 1.0 / plan.room_interval_seconds
    publisher_of: dict[int, int] = {}
    for index, position in enumerate(reply["positions"]):
        publisher_of.setdefault(specs[position][1], index)
    streams = [
        [publisher_of[room], rate, rng.uniform(0, plan.room_interval_seconds)]
        for room in range(plan.rooms)
        if room in publisher_of
    ]
    members = Counter(specs[position][1] for position in reply["positions"])
    offered = sum(members[room] for room in publisher_of) * rate
    result = session.measure("rooms", streams)
    redis_clients = redis_connections_per_process(session.infra, stack.pids)
    session.close("rooms")
    total_rate = len(streams) * rate
    base = session.base("rooms") | {
        "planned_subscribers": len(specs),
        "rooms": len(streams),
        "planned_rooms": plan.rooms,
        "members_per_room": plan.room_members,
        "connect_seconds": reply["seconds"],
        "connect_failed": reply["failed"],
        "redis_connections_per_process": redis_clients,
    }
    return [delivery_record(base, result, rate=total_rate, offered=offered)]


# --- send -----------------------------------------------------------------------


def run_send(session: Session) -> list[dict[str, Any]]:
    """Senders on both instances into one room at rising rates: ack latency."""
    plan = session.plan
    instances = len(session.stack.processes)
    path = session.room_path(_room_for(session, "send"))
    most = publishers_for(max(plan.send_rates))
    specs = [[i % instances, 0, path, session.header_index(i)] for i in range(most)]
    session.connect("send", specs, budget=plan.fanout_connect_seconds)
    records = []
    for rate in plan.send_rates:
        senders = publishers_for(rate)
        result = session.measure("send", publisher_streams(rate, senders))
        base = session.base("send") | {
            "publishers": senders,
            "planned_subscribers": most,
        }
        record = delivery_record(base, result, rate=rate, offered=rate * most)
        # Every ack follows a commit: acks arriving in the window are the
        # store rate, however late they are for their own message.
        stored = result["acks_received_in_window"] / plan.window_seconds
        record["stored_per_s"] = round(stored, 1)
        records.append(record)
        if session.profile and rate == max(plan.send_rates):
            record["profile"] = _profile(
                session, "send", publisher_streams(rate, senders), "-send"
            )
    session.close("send")
    return records


# --- storm ----------------------------------------------------------------------


def run_storm(session: Session) -> list[dict[str, Any]]:
    """A deploy: B gets SIGTERM and its clients resume on A (``bench/storm.py``).

    Stayers and a publisher on A, movers on B, one room. B is started again
    afterwards, so the stack is whole for whatever runs next.
    """
    plan = session.plan
    stack = session.stack
    began = _begin_storm(session, session.room_path(_room_for(session, "storm")))
    time.sleep(max(0.0, began["sigterm_at"] - time.monotonic()))
    instance_b = stack.processes[1]
    sigterm_at, exit_status, exit_seconds = _terminate(session, instance_b)
    result = session.gen.call(
        "storm_finish",
        timeout=config.STORM_GIVE_UP_SECONDS + config.STORM_DRAIN_SECONDS + 90,
        sigterm_at=sigterm_at,
        drain_seconds=config.STORM_DRAIN_SECONDS,
    )
    instance_b.start()
    environment.wait_quiet(stack.pids)
    base = session.base("storm") | {
        "planned_stayers": plan.storm_stayers,
        "planned_movers": plan.storm_movers,
        "connect_seconds": began["connect_seconds"],
        # Busy (4503) or limited while joining, and retried as told.
        "join_refusals": began["join_refusals"],
        "b_exit_status": exit_status,
        "b_exit_seconds": round(exit_seconds, 2),
        # Left at the server's default: the bench measures what ships.
        "handshake_concurrency": os.environ.get(
            "SWITCHBOARD_HANDSHAKE_CONCURRENCY", "default"
        ),
    }
    return [storm_record(base, result)]


def _begin_storm(session: Session, path: str) -> dict[str, Any]:
    """Connect stayers and the publisher to A, movers to B; start sending."""
    plan = session.plan
    stack = session.stack
    began = session.gen.call(
        "storm_begin",
        timeout=plan.storm_connect_seconds + 2 * config.HANDSHAKE_SECONDS + 30,
        step=next(session.steps),
        instances=stack.instances,
        path=path,
        headers=stack.headers,
        stayers=plan.storm_stayers,
        movers=plan.storm_movers,
        concurrency=config.CONNECT_CONCURRENCY,
        handshake_seconds=config.HANDSHAKE_SECONDS,
        budget_seconds=plan.storm_connect_seconds,
        rate=config.STORM_RATE,
        before_seconds=plan.storm_before_seconds,
        give_up_seconds=config.STORM_GIVE_UP_SECONDS,
        after_seconds=config.STORM_AFTER_SECONDS,
        # Instance A only: B's CPU is gone with B.
        pids=stack.pids[:1],
        redis_pid=session.infra.redis_pid(),
        db_pid=session.infra.postgres_pid(),
    )
    if began["join_errors"]:
        session.notes.append(
            f"{stack.label} storm: {began['stayers']} stayers and "
            f"{began['movers']} movers joined in {began['connect_seconds']:g} s; "
            f"{began['join_errors']}"
        )
    return began


def _terminate(
    session: Session, process: AppProcess
) -> tuple[float, int | None, float]:
    """SIGTERM, as a deploy sends it: (when, exit status, seconds to exit).

    An instance that outlives ``STORM_EXIT_SECONDS`` is killed (status None).
    """
    sigterm_at = time.monotonic()
    try:
        status, seconds = process.terminate(config.STORM_EXIT_SECONDS)
    except ServiceFailed:
        session.notes.append(
            f"{session.stack.label} storm: instance B outlived SIGTERM by "
            f"{config.STORM_EXIT_SECONDS:g} s and was killed"
        )
        return sigterm_at, None, time.monotonic() - sigterm_at
    return sigterm_at, status, seconds


# --- trade-offs -------------------------------------------------------------------


def negotiated_extensions(session: Session) -> dict[str, str | None]:
    """What a ``websockets`` client offering permessage-deflate is granted."""
    from websockets.sync.client import connect

    stack = session.stack
    host, port = stack.instances[0]
    path = session.room_path(_room_for(session, "fanout"))
    url = f"ws://{host}:{port}{path}"
    offered: dict[str, str | None] = {}
    for compression in ("deflate", None):
        with connect(
            url,
            compression=compression,
            additional_headers=stack.headers[0],
            open_timeout=10,
        ) as websocket:
            assert websocket.response is not None
            granted = websocket.response.headers.get("Sec-WebSocket-Extensions")
        offered["offered" if compression else "not offered"] = granted
    return offered
