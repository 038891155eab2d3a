"""Limits shared by every instance: rate buckets and connection slots.

One client must not get around a limit by spreading its work over sockets or
instances, so the counts live in Redis when ``REDIS_URL`` is set (in process
memory otherwise, which is right for one process). With several Redis
servers (``REDIS_URLS``) each key lives on one of them, chosen by
``core.shards.of_key``. Two kinds:

- **Buckets** (``take``/``atake``): a token bucket per (name, ident), ``rate``
  tokens a second, at most ``burst`` saved up, kept as one Redis key by the
  generic cell rate algorithm (one atomic script call, Redis' own clock).
- **Slots** (``Slots``): at most ``limit`` concurrent holders per (name,
  ident), e.g. connections per user. Each holder is a member of a Redis sorted
  set scored by a lease expiry that its process renews, so a killed
  instance's slots free themselves within ``SLOT_LEASE_SECONDS``.

If Redis fails, each call falls back to this process's memory and logs (at
most every ``FALLBACK_LOG_SECONDS``): limits stay in force per process
rather than failing every handshake or request while Redis is away (only
the keys of the failing shard, when there are several).
"""

import asyncio
import logging
import math
import threading
import time
import weakref
from collections import defaultdict
from typing import Any, NamedTuple

import redis
from django.conf import settings
from redis import asyncio as aioredis

from core import metrics, shards

logger = logging.getLogger(__name__)

SLOT_LEASE_SECONDS = 60.0
SLOT_RENEW_SECONDS = 20.0
FALLBACK_LOG_SECONDS = 30.0
# Redis connections one process uses for limits, and how long a call waits
# for one (or for Redis) before it falls back to memory.
REDIS_CONNECTIONS = 4
REDIS_WAIT_SECONDS = 1.0

# Redis' own clock in milliseconds, as ``now``: one clock for every instance.
_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The generic cell rate algorithm on bucket key {key}, {interval} ms per
# token and {burst} saved up: takes a token, or returns {refused}.
_TAKE = """
local interval = tonumber({interval})
local burst = tonumber({burst})
local tat = tonumber(redis.call('GET', {key}) or now)
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait > 0.001 then return {refused} end
redis.call('SET', {key}, tat + interval, 'PX', math.ceil(tat + interval - now))
"""

# A slot of set {key} for member {member} among {limit}, leased {lease} ms:
# returns 1 if given, 0 if all are held.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', {key}, '-inf', now)
if redis.call('ZCARD', {key}) >= tonumber({limit}) then return 0 end
redis.call('ZADD', {key}, now + tonumber({lease}), {member})
redis.call('PEXPIRE', {key}, {lease})
return 1
"""

# KEYS[1]: the bucket; ARGV: milliseconds per token, burst. Returns 0 if a
# token was taken, else the milliseconds until one is available.
TAKE_SCRIPT = (
    _CLOCK
    + _TAKE.format(
        key="KEYS[1]", interval="ARGV[1]", burst="ARGV[2]", refused="math.ceil(wait)"
    )
    + "return 0"
)

# KEYS[1]: the slot set; ARGV: limit, lease ms, member. 1 if admitted.
ACQUIRE_SCRIPT = _CLOCK + _ACQUIRE.format(
    key="KEYS[1]", limit="ARGV[1]", lease="ARGV[2]", member="ARGV[3]"
)

# A toll, then a slot, in one round trip (a handshake's two limits).
# KEYS: the slot set, the toll's bucket; ARGV: limit, lease ms, member, ms
# per token, burst. 1: admitted; 0: all slots held; negative: no token, for
# that many milliseconds (no slot was tried).
TOLL_THEN_ACQUIRE_SCRIPT = (
    _CLOCK
    + _TAKE.format(
        key="KEYS[2]", interval="ARGV[4]", burst="ARGV[5]", refused="-math.ceil(wait)"
    )
    + _ACQUIRE.format(key="KEYS[1]", limit="ARGV[1]", lease="ARGV[2]", member="ARGV[3]")
)

# KEYS[1]: the slot set; ARGV: lease ms, members to renew.
RENEW_SCRIPT = (
    _CLOCK
    + """
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""
)


def owner(user: Any, address: str) -> str:
    """Whose budget a request spends: the user's, or the anonymous address's.

    The same for WebSocket frames and HTTP requests, so a user has one
    ``send`` budget wherever they post from.
    """
    if user.is_authenticated:
        return f"user:{user.pk}"
    return f"address:{address}"


def typing_owner(user_id: object, room_id: int) -> str:
    """Whose typing interval a notice spends: the user's in that room, the
    same for sockets, streams and the HTTP API; typing in one room says
    nothing about another."""
    return f"user:{user_id}:room:{room_id}"


def _key(kind: str, name: str, ident: str) -> str:
    return f"{settings.CHANNEL_PREFIX}:{kind}:{name}:{ident}"


_last_fallback_log = -math.inf
# After a failure, calls go straight to memory this long before Redis is
# tried again: while Redis hangs, no call waits REDIS_WAIT_SECONDS for it.
FALLBACK_REST_SECONDS = 2.0
# Per shard: a failing shard sends only its own keys to memory.
_redis_resting_until: dict[int, float] = {}


def _use_redis(shard: int) -> bool:
    return bool(settings.REDIS_URL) and time.monotonic() >= (
        _redis_resting_until.get(shard, -math.inf)
    )


def _fell_back(what: str, exc: Exception, shard: int) -> None:
    global _last_fallback_log
    now = time.monotonic()
    _redis_resting_until[shard] = now + FALLBACK_REST_SECONDS
    if now - _last_fallback_log >= FALLBACK_LOG_SECONDS:
        _last_fallback_log = now
        logger.warning(
            "limits: Redis%s failed for %s (%s); this process counts alone meanwhile",
            f" shard {shard}" if shards.count() > 1 else "",
            what,
            exc.__class__.__name__,
        )


# --- process memory ----------------------------------------------------------


class _Memory:
    """The same rules in this process (no Redis, or Redis failing)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, float] = {}  # key -> theoretical arrival time
        self.slots: dict[str, set[str]] = defaultdict(set)

    def take(self, key: str, rate: float, burst: int) -> float:
        interval = 1.0 / rate
        with self.lock:
            now = time.monotonic()
            tat = max(self.buckets.get(key, now), now)
            # Compared with a tolerance: float rounding must not refuse the
            # first token of a full bucket.
            wait = tat - now - (burst - 1) * interval
            if wait > 1e-9:
                return wait
            self.buckets[key] = tat + interval
            if len(self.buckets) > 100_000:
                self._forget_full_buckets(now)
            return 0.0

    def _forget_full_buckets(self, now: float) -> None:
        # A bucket whose arrival time has passed is full again: same as none.
        for key in [key for key, tat in self.buckets.items() if tat <= now]:
            del self.buckets[key]

    def acquire(self, key: str, limit: int, member: str) -> bool:
        with self.lock:
            held = self.slots[key]
            if len(held) >= limit:
                return False
            held.add(member)
            return True

    def release(self, key: str, member: str) -> None:
        with self.lock:
            held = self.slots.get(key)
            if held is not None:
                held.discard(member)
                if not held:
                    del self.slots[key]


_memory = _Memory()


# --- buckets -------------------------------------------------------------------


_sync_clients: dict[int, redis.Redis] = {}
_sync_lock = threading.Lock()


def _sync_redis(shard: int) -> redis.Redis:
    client = _sync_clients.get(shard)
    if client is not None:
        return client
    with _sync_lock:
        if shard not in _sync_clients:
            _sync_clients[shard] = _new_sync_redis(shard)
        return _sync_clients[shard]


def _new_sync_redis(shard: int) -> redis.Redis:
    # Request threads share at most REDIS_CONNECTIONS connections per shard.
    pool = redis.BlockingConnectionPool.from_url(
        settings.REDIS_URLS[shard],
        **{
            **settings.REDIS_SHARD_OPTIONS[shard],
            "socket_timeout": REDIS_WAIT_SECONDS,
            "socket_connect_timeout": REDIS_WAIT_SECONDS,
        },
        max_connections=REDIS_CONNECTIONS,
        timeout=REDIS_WAIT_SECONDS,
        client_name=f"{settings.CHANNEL_PREFIX}-limits-http",
    )
    return redis.Redis(connection_pool=pool)


def take(name: str, ident: str, rate: float, burst: int) -> float:
    """Take a token from bucket (name, ident): 0.0, or seconds to wait."""
    key = _key("bucket", name, ident)
    shard = shards.of_key(key)
    wait = None
    if _use_redis(shard):
        try:
            started = time.perf_counter()
            waited_ms = _sync_redis(shard).eval(
                TAKE_SCRIPT, 1, key, 1000.0 / rate, burst
            )
            metrics.observe_call(_REDIS_LIMIT_SECONDS, started)
            wait = int(waited_ms) / 1000.0
        except redis.RedisError as exc:
            _fell_back(name, exc, shard)
    if wait is None:
        wait = _memory.take(key, rate, burst)
    return _counted(name, wait)


async def atake(name: str, ident: str, rate: float, burst: int) -> float:
    """``take`` for the event loop."""
    key = _key("bucket", name, ident)
    shard = shards.of_key(key)
    wait = None
    if _use_redis(shard):
        try:
            started = time.perf_counter()
            async with asyncio.timeout(REDIS_WAIT_SECONDS):
                waited_ms = await _async_redis(shard).eval(
                    TAKE_SCRIPT, 1, key, 1000.0 / rate, burst
                )
            metrics.observe_call(_REDIS_LIMIT_SECONDS, started)
            wait = int(waited_ms) / 1000.0
        except (redis.RedisError, TimeoutError) as exc:
            _fell_back(name, exc, shard)
    if wait is None:
        wait = _memory.take(key, rate, burst)
    return _counted(name, wait)


_REDIS_LIMIT_SECONDS = metrics.redis_seconds.labels("limit")
_REDIS_SLOT_SECONDS = metrics.redis_seconds.labels("slot")


def _counted(name: str, wait: float) -> float:
    """``wait``, counting a refusal of bucket ``name`` in the metrics."""
    if wait:
        metrics.rate_limited.labels(name).inc()
    return wait


# --- slots ---------------------------------------------------------------------


class Toll(NamedTuple):
    """A token of bucket (name, ident) that a slot costs first."""

    name: str
    ident: str
    rate: float
    burst: int


class Acquired(NamedTuple):
    """What ``Slots.acquire_after_toll`` came to."""

    admitted: bool
    toll_wait: float = 0.0  # > 0: seconds until the toll's bucket has a token


class Slots:
    """Concurrent holders per (name, ident), leased and renewed in Redis.

    One per event loop (``get_slots``): Redis clients belong to their loop.
    """

    def __init__(self) -> None:
        # key -> members this process holds there, in Redis or in memory.
        self.in_redis: dict[str, set[str]] = defaultdict(set)
        self.in_memory: dict[str, set[str]] = defaultdict(set)
        self.task: asyncio.Task[None] | None = None

    async def acquire(self, name: str, ident: str, member: str, limit: int) -> bool:
        """Hold a slot of (name, ident) for ``member``; False if all are held."""
        acquired = await self._acquire(name, ident, member, limit, None)
        if not acquired.admitted:
            metrics.rate_limited.labels(name).inc()
        return acquired.admitted

    async def acquire_after_toll(
        self, toll: Toll, name: str, ident: str, member: str, limit: int
    ) -> Acquired:
        """``atake`` a token of ``toll``, then ``acquire``, in one Redis call.

        Without a token no slot is tried (``Acquired.toll_wait``); a token
        taken stays taken when all slots are held, as with two calls.
        """
        acquired = await self._acquire(name, ident, member, limit, toll)
        if not acquired.admitted:
            metrics.rate_limited.labels(toll.name if acquired.toll_wait else name).inc()
        return acquired

    async def _acquire(
        self, name: str, ident: str, member: str, limit: int, toll: Toll | None
    ) -> Acquired:
        key = _key("slots", name, ident)
        shard = shards.of_key(key)
        if toll is not None:
            bucket = _key("bucket", toll.name, toll.ident)
            if shards.of_key(bucket) != shard:
                # On another Redis: the toll first, then the slot, as two
                # calls (a token taken stays taken either way).
                wait = await _take_toll(toll, bucket)
                if wait:
                    return Acquired(False, wait)
                toll = None
        if _use_redis(shard):
            lease_ms = int(SLOT_LEASE_SECONDS * 1000)
            if toll is None:
                script, keys, tail = ACQUIRE_SCRIPT, [key], []
            else:
                script = TOLL_THEN_ACQUIRE_SCRIPT
                keys = [key, _key("bucket", toll.name, toll.ident)]
                tail = [1000.0 / toll.rate, toll.burst]
            try:
                started = time.perf_counter()
                async with asyncio.timeout(REDIS_WAIT_SECONDS):
                    outcome = await _async_redis(shard).eval(
                        script, len(keys), *keys, limit, lease_ms, member, *tail
                    )
                metrics.observe_call(_REDIS_SLOT_SECONDS, started)
            except (redis.RedisError, TimeoutError) as exc:
                _fell_back(name, exc, shard)
            else:
                outcome = int(outcome)
                if outcome < 0:
                    return Acquired(False, -outcome / 1000.0)
                if not outcome:
                    return Acquired(False)
                self.in_redis[key].add(member)
                self._ensure_renewal()
                return Acquired(True)
        if toll is not None:
            bucket = _key("bucket", toll.name, toll.ident)
            wait = _memory.take(bucket, toll.rate, toll.burst)
            if wait:
                return Acquired(False, wait)
        if not _memory.acquire(key, limit, member):
            return Acquired(False)
        self.in_memory[key].add(member)
        return Acquired(True)

    async def release(self, name: str, ident: str, member: str) -> None:
        """Give back ``member``'s slot (never raises)."""
        key = _key("slots", name, ident)
        held = self.in_memory.get(key)
        if held is not None and member in held:
            _forget(self.in_memory, key, member)
            _memory.release(key, member)
            return
        held = self.in_redis.get(key)
        if held is None or member not in held:
            return
        _forget(self.in_redis, key, member)
        shard = shards.of_key(key)
        if not _use_redis(shard):
            return  # the lease runs out by itself
        try:
            async with asyncio.timeout(REDIS_WAIT_SECONDS):
                await _async_redis(shard).zrem(key, member)
        except (redis.RedisError, TimeoutError) as exc:
            _fell_back(name, exc, shard)  # the lease runs out by itself

    def _ensure_renewal(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while self.in_redis:
            await asyncio.sleep(SLOT_RENEW_SECONDS)
            by_shard: dict[int, dict[str, set[str]]] = defaultdict(dict)
            for key, members in list(self.in_redis.items()):
                by_shard[shards.of_key(key)][key] = set(members)
            for shard, held in by_shard.items():
                try:
                    await self._renew(shard, held)
                except (redis.RedisError, TimeoutError) as exc:
                    _fell_back("renewing slots", exc, shard)

    async def _renew(self, shard: int, held: dict[str, set[str]]) -> None:
        lease_ms = int(SLOT_LEASE_SECONDS * 1000)
        client = _async_redis(shard)
        async with asyncio.timeout(REDIS_WAIT_SECONDS * 5):
            async with client.pipeline(transaction=False) as pipe:
                for key, members in held.items():
                    pipe.eval(RENEW_SCRIPT, 1, key, lease_ms, *members)
                await pipe.execute()


async def _take_toll(toll: Toll, bucket: str) -> float:
    """A token of ``toll``'s bucket (its own shard), uncounted: 0.0 or the
    seconds until one is available."""
    shard = shards.of_key(bucket)
    if _use_redis(shard):
        try:
            async with asyncio.timeout(REDIS_WAIT_SECONDS):
                waited_ms = await _async_redis(shard).eval(
                    TAKE_SCRIPT, 1, bucket, 1000.0 / toll.rate, toll.burst
                )
            return int(waited_ms) / 1000.0
        except (redis.RedisError, TimeoutError) as exc:
            _fell_back(toll.name, exc, shard)
    return _memory.take(bucket, toll.rate, toll.burst)


def _forget(table: dict[str, set[str]], key: str, member: str) -> None:
    members = table[key]
    members.discard(member)
    if not members:
        del table[key]


# --- per event loop -----------------------------------------------------------

# Per event loop: its client of each shard.
_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Any]]" = (  # noqa: E501
    weakref.WeakKeyDictionary()
)
_slots: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Slots]" = (
    weakref.WeakKeyDictionary()
)


def async_redis() -> aioredis.Redis:
    """This event loop's client of the first Redis, for metrics snapshots."""
    return _async_redis(0)


def _async_redis(shard: int) -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    clients = _async_clients.get(loop)
    if clients is None:
        clients = _async_clients[loop] = {}
    client = clients.get(shard)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URLS[shard],
            **{
                **settings.REDIS_SHARD_OPTIONS[shard],
                "socket_timeout": REDIS_WAIT_SECONDS,
            },
            max_connections=REDIS_CONNECTIONS,
            timeout=REDIS_WAIT_SECONDS,
            client_name=f"{settings.CHANNEL_PREFIX}-limits",
        )
        client = clients[shard] = aioredis.Redis(connection_pool=pool)
    return client


def get_slots() -> Slots:
    """The ``Slots`` of the running event loop."""
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = Slots()
    return slots


def reset_for_tests() -> None:
    """Forget every count kept in this process."""
    global _memory
    _memory = _Memory()
    _sync_clients.clear()
    _redis_resting_until.clear()
    for slots in list(_slots.values()):
        if slots.task is not None:
            slots.task.cancel()
    _slots.clear()
    _async_clients.clear()
