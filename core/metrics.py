"""Prometheus metrics: what each instance counts, and ``/metrics`` for the fleet.

Counters and histograms are prometheus_client's, in a registry of our own;
figures that already exist elsewhere (the hub's gaps, unsent output, the
database pool, the event loop's lag) are read when scraped, so the hot paths
pay nothing for them. The fan-out path pays two calls per message per
process, never one per socket.

App Platform puts its load balancer in front of every instance, and gives
no address of a single one: a scrape of ``/metrics`` reaches whichever
instance the balancer picks. A per-instance endpoint would therefore give
Prometheus a different instance's counters on every scrape. So each
instance writes a snapshot of its metrics to Redis every
``METRICS_SNAPSHOT_SECONDS`` (kept for three times that), and ``/metrics``
answers for the whole fleet: its own metrics as they are now, the others'
from their last snapshot, every sample labelled with its ``instance``. An
instance that stopped drops out when its snapshot expires. Without Redis the
answer holds this instance only, and ``switchboard_metrics_fleet_complete``
says so (0).
"""

import asyncio
import hmac
import json
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from django.conf import settings
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

METRICS_SNAPSHOT_SECONDS = 10.0
SNAPSHOT_TTL_SECONDS = 3 * METRICS_SNAPSHOT_SECONDS
# Host name and process id: one process per App Platform container, several
# per host under `make stack`.
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"

# The _created series double what is stored and sent for nothing we use.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Seconds: from a millisecond (a local call) to past the timeouts that end
# a call (publish 1 s, statement 5 s).
_CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
# Commit to socket: milliseconds live, seconds after an outage (the
# delivery bound is 5 s).
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0, 30.0)  # fmt: skip

connections_open = Gauge(
    "switchboard_connections_open",
    "Open WebSocket connections, by the kind of room.",
    ["room_kind"],
    registry=REGISTRY,
)
handshakes = Counter(
    "switchboard_handshakes",
    "WebSocket handshakes, by outcome: accepted; refused (403: no such room, "
    "no access, or bad origin); limited (4429); busy (4503); failed (an "
    "exception).",
    ["outcome"],
    registry=REGISTRY,
)
frames_received = Counter(
    "switchboard_frames_received",
    "Client frames, by type (invalid: not a frame; unknown: unknown type).",
    ["type"],
    registry=REGISTRY,
)
frames_sent = Counter(
    "switchboard_frames_sent",
    "Frames sent to clients, by type; live messages are counted per socket.",
    ["type"],
    registry=REGISTRY,
)
error_frames = Counter(
    "switchboard_error_frames",
    "Error frames sent, by code.",
    ["code"],
    registry=REGISTRY,
)
rate_limited = Counter(
    "switchboard_rate_limited",
    "Requests refused by a limit, by limit.",
    ["limit"],
    registry=REGISTRY,
)
messages_stored = Counter(
    "switchboard_messages_stored",
    "Messages committed to the database (repeats of a client_id excluded).",
    registry=REGISTRY,
)
publishes = Counter(
    "switchboard_publishes",
    "Channel-layer publishes of room events, by outcome (ok, failed).",
    ["outcome"],
    registry=REGISTRY,
)
publish_seconds = Histogram(
    "switchboard_publish_seconds",
    "Time to publish one room event to the channel layer.",
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
delivery_lag_seconds = Histogram(
    "switchboard_delivery_lag_seconds",
    "From a message's commit to its frame written to this instance's "
    "sockets, once per message and instance (live delivery only).",
    buckets=_LAG_BUCKETS,
    registry=REGISTRY,
)
slow_client_closes = Counter(
    "switchboard_slow_client_closes",
    "Connections closed with 4008 because their client did not read.",
    registry=REGISTRY,
)
catch_ups = Counter(
    "switchboard_catch_ups",
    "Connections that read from the database what live delivery missed "
    "(after a channel-layer gap or a lost publish).",
    registry=REGISTRY,
)
presence_errors = Counter(
    "switchboard_presence_errors",
    "Presence updates that failed (Redis unreachable); retried.",
    registry=REGISTRY,
)
database_seconds = Histogram(
    "switchboard_database_call_seconds",
    "One unit of database work on a database thread, by executor.",
    ["executor"],
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
redis_seconds = Histogram(
    "switchboard_redis_call_seconds",
    "One Redis round trip, by call: limit, slot, presence, probe (the hub's "
    "probe through the channel layer and back).",
    ["call"],
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)


gc_full_collection_seconds = Histogram(
    "switchboard_gc_full_collection_seconds",
    "Full (oldest generation) garbage collections: each pauses every "
    "connection of the process for this long (core.collector).",
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)


class _Readings(Collector):
    """Figures kept elsewhere, read at scrape time: nothing on the hot paths."""

    def collect(self) -> Iterator[Metric]:
        for name, documentation, family, read in _READINGS:
            try:
                value = read()
            except Exception as exc:  # it must not fail the scrape
                logger.debug("metric %s not read: %r", name, exc)
                continue
            if value is not None:
                yield family(name, documentation, value=value)


_READINGS: list[tuple[str, str, type, Callable[[], float | None]]] = []
_Read = TypeVar("_Read", bound=Callable[[], float | None])


def reading(
    name: str, documentation: str, *, counter: bool = False
) -> Callable[[_Read], _Read]:
    """Register ``func()`` as a gauge (or a counter: a count that only
    grows) read when scraped; None leaves it out."""
    family = CounterMetricFamily if counter else GaugeMetricFamily

    def register(func: _Read) -> _Read:
        _READINGS.append((name, documentation, family, func))
        return func

    return register


REGISTRY.register(_Readings())


def observe_call(histogram: Histogram, started: float) -> None:
    """Observe the seconds since ``started`` (``time.perf_counter()``)."""
    histogram.observe(time.perf_counter() - started)


# --- the fleet ---------------------------------------------------------------------


def _snapshot() -> list[dict[str, Any]]:
    """This instance's metrics as plain data, for Redis."""
    return [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "unit": family.unit,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
        for family in REGISTRY.collect()
    ]


def _snapshot_key(instance: str) -> str:
    return f"{settings.CHANNEL_PREFIX}:metrics:{instance}"


async def _write_snapshot(redis: Any) -> None:
    await redis.set(
        _snapshot_key(INSTANCE),
        json.dumps(_snapshot()),
        px=int(SNAPSHOT_TTL_SECONDS * 1000),
    )


async def _snapshot_forever() -> None:
    from core.limits import async_redis

    while True:
        try:
            await _write_snapshot(async_redis())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("metrics snapshot not written: %r", exc)
        await asyncio.sleep(METRICS_SNAPSHOT_SECONDS)


_snapshot_tasks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = (
    weakref.WeakKeyDictionary()
)


def ensure_snapshots() -> None:
    """Start writing this instance's snapshots, once per event loop.

    Called on every HTTP request and WebSocket subscription: the platform's
    health checks reach every instance, so every instance starts.
    """
    if not settings.REDIS_URL or not settings.METRICS_TOKEN:
        return
    loop = asyncio.get_running_loop()
    task = _snapshot_tasks.get(loop)
    if task is None or task.done():
        _snapshot_tasks[loop] = loop.create_task(_snapshot_forever())


async def _fleet_snapshots() -> tuple[dict[str, list[dict[str, Any]]], bool]:
    """Every other live instance's last snapshot; False if Redis failed."""
    if not settings.REDIS_URL:
        return {}, True
    from core.limits import async_redis

    redis = async_redis()
    prefix = _snapshot_key("")
    try:
        async with asyncio.timeout(settings.PUBLISH_TIMEOUT_SECONDS):
            keys = [key async for key in redis.scan_iter(match=prefix + "*")]
            values = await redis.mget(keys) if keys else []
    except Exception as exc:
        logger.warning("metrics of the other instances unavailable: %r", exc)
        return {}, False
    snapshots = {}
    for key, value in zip(keys, values, strict=True):
        instance = (key.decode() if isinstance(key, bytes) else key)[len(prefix) :]
        if value is not None and instance != INSTANCE:
            snapshots[instance] = json.loads(value)
    return snapshots, True


class _Fleet(Collector):
    """Families merged across instances, each sample labelled ``instance``."""

    def __init__(
        self, snapshots: dict[str, list[dict[str, Any]]], *extra: Metric
    ) -> None:
        self.snapshots = snapshots
        self.extra = extra

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for instance, snapshot in sorted(self.snapshots.items()):
            for item in snapshot:
                family = families.get(item["name"])
                if family is None:
                    family = families[item["name"]] = Metric(
                        item["name"], item["help"], item["type"], item["unit"]
                    )
                for name, labels, value in item["samples"]:
                    family.add_sample(name, {**labels, "instance": instance}, value)
        return [*families.values(), *self.extra]


async def exposition() -> bytes:
    """The fleet's metrics in Prometheus' text format."""
    # Also from this instance's own loop, so that a scrape starts it.
    ensure_snapshots()
    others, complete = await _fleet_snapshots()
    completeness = GaugeMetricFamily(
        "switchboard_metrics_fleet_complete",
        "1 if this answer holds every live instance's metrics; 0 if Redis "
        "failed and it holds the answering instance's only.",
        labels=["instance"],
    )
    completeness.add_metric([INSTANCE], 1.0 if complete else 0.0)
    return generate_latest(_Fleet({**others, INSTANCE: _snapshot()}, completeness))


def token_matches(header: str) -> bool:
    """True if ``header`` is ``Bearer <SWITCHBOARD_METRICS_TOKEN>``."""
    scheme, _, token = header.partition(" ")
    expected = settings.METRICS_TOKEN
    return (
        bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), expected.encode())
    )
