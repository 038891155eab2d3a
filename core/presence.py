"""Who is in a room, across instances.

Each instance keeps one entry per (instance, user) for every room it serves,
plus one per anonymous connection, with an expiry: in a Redis sorted set per
room scored by expiry when ``REDIS_URL`` is set, in process memory otherwise.
With several Redis servers (``REDIS_URLS``), a room's keys live on the shard
that carries the room's channel-layer group (``core.shards.of_group``).
Live entries are refreshed every ``PRESENCE_REFRESH_SECONDS`` with a
``PRESENCE_TTL_SECONDS`` lifetime; every instance sweeps expired entries of the
rooms it serves, so a killed instance's users disappear within about a TTL.
When a room's presence changes, one ``room.presence`` event goes to the room,
at most once per second per room across all instances.
"""

import asyncio
import hashlib
import logging
import time
import uuid
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from django.conf import settings
from redis import asyncio as aioredis

from core import metrics, protocol, shards
from core.services import publish, room_group

logger = logging.getLogger(__name__)

_JOIN_SECONDS = metrics.redis_seconds.labels("presence")

INSTANCE_ID = uuid.uuid4().hex[:12]
SWEEP_EVERY_SECONDS = 5.0
# Redis connections one process uses for presence, and how long a command
# waits for one of them before it fails.
REDIS_CONNECTIONS = 4
REDIS_WAIT_SECONDS = 5.0
# How long a handshake waits for shared presence before it answers with
# this instance's view, marked unavailable.
JOIN_WAIT_SECONDS = 1.0
# Rooms per Redis pipeline when every room is swept or refreshed: one round
# trip for many rooms, short enough not to hold the event loop for long.
ROOMS_PER_PIPELINE = 100

Snapshot = tuple[frozenset[str], int]


class RoomRef(NamedTuple):
    """A room as presence knows it: keyed by id (a slug can be reused by a
    later room), named by slug in frames."""

    id: int
    slug: str


def _member(kind: str, value: str) -> str:
    return f"{INSTANCE_ID}|{kind}|{value}"


def _snapshot(members: list[str]) -> Snapshot:
    users, anonymous = set(), 0
    for member in members:
        _, kind, value = member.split("|", 2)
        if kind == "u":
            users.add(value)
        else:
            anonymous += 1
    return frozenset(users), anonymous


def _digest(snapshot: Snapshot) -> str:
    users, anonymous = snapshot
    text = "\n".join(sorted(users)) + f"\n#{anonymous}"
    return hashlib.sha256(text.encode()).hexdigest()


class MemoryStore:
    """Entries in this process (no Redis: one process only)."""

    def __init__(self) -> None:
        self.rooms: dict[RoomRef, dict[str, float]] = defaultdict(dict)
        self.published: dict[RoomRef, str] = {}
        self.throttle: dict[RoomRef, float] = {}

    async def put(self, room: RoomRef, members: list[str], expires: float) -> None:
        self.rooms[room].update(dict.fromkeys(members, expires))

    async def put_many(self, members: dict[RoomRef, list[str]], expires: float) -> None:
        for room, entries in members.items():
            await self.put(room, entries, expires)

    async def put_and_read(
        self, room: RoomRef, members: list[str], expires: float, now: float
    ) -> list[str]:
        await self.put(room, members, expires)
        return await self.members(room, now)

    async def remove(self, room: RoomRef, members: list[str]) -> None:
        for member in members:
            self.rooms[room].pop(member, None)

    async def sweep_many(self, rooms: list[RoomRef], now: float) -> list[RoomRef]:
        swept = []
        for room in rooms:
            entries = self.rooms[room]
            expired = [member for member, expiry in entries.items() if expiry <= now]
            for member in expired:
                del entries[member]
            if expired:
                swept.append(room)
        return swept

    async def members(self, room: RoomRef, now: float) -> list[str]:
        return [m for m, expiry in self.rooms[room].items() if expiry > now]

    async def claim_publish(
        self, room: RoomRef, digest: str, force: bool = False
    ) -> bool:
        now = time.monotonic()
        if not force and self.published.get(room) == digest:
            return False
        if self.throttle.get(room, 0) > now:
            return False
        self.published[room] = digest
        self.throttle[room] = now + settings.PRESENCE_BROADCAST_SECONDS
        return True


class RedisStore:
    """Entries in Redis, shared by every instance."""

    def __init__(self) -> None:
        # A burst of handshakes makes as many concurrent presence writes; a
        # blocking pool queues them on a few connections instead of opening
        # one each (redis-py's default pool has no practical limit). One
        # client per shard, made when a room of that shard first needs it.
        self.clients: dict[int, aioredis.Redis] = {}
        self.prefix = f"{settings.CHANNEL_PREFIX}:presence"

    def client(self, room: RoomRef) -> aioredis.Redis:
        """The client of the shard that holds ``room``'s presence."""
        shard = shards.of_group(room_group(room.id))
        client = self.clients.get(shard)
        if client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.REDIS_URLS[shard],
                **settings.REDIS_SHARD_OPTIONS[shard],
                max_connections=REDIS_CONNECTIONS,
                timeout=REDIS_WAIT_SECONDS,
                client_name=f"{settings.CHANNEL_PREFIX}-presence",
                decode_responses=True,
            )
            client = self.clients[shard] = aioredis.Redis(connection_pool=pool)
        return client

    def _key(self, room: RoomRef, suffix: str = "") -> str:
        return f"{self.prefix}:{room.id}{suffix}"

    def _batches(
        self, rooms: Iterable[RoomRef]
    ) -> list[tuple[aioredis.Redis, list[RoomRef]]]:
        """``rooms`` by shard, in pipelines of at most ROOMS_PER_PIPELINE."""
        by_client: dict[aioredis.Redis, list[RoomRef]] = defaultdict(list)
        for room in rooms:
            by_client[self.client(room)].append(room)
        return [
            (client, group[start : start + ROOMS_PER_PIPELINE])
            for client, group in by_client.items()
            for start in range(0, len(group), ROOMS_PER_PIPELINE)
        ]

    async def put_many(self, members: dict[RoomRef, list[str]], expires: float) -> None:
        """Refresh many rooms' entries: a round trip per pipeline, not per room."""
        ttl = int(settings.PRESENCE_TTL_SECONDS * 2) + 1
        for client, rooms in self._batches(room for room in members if members[room]):
            async with client.pipeline(transaction=False) as pipe:
                for room in rooms:
                    key = self._key(room)
                    pipe.zadd(key, dict.fromkeys(members[room], expires))
                    # The whole set goes if no instance refreshes it any more.
                    pipe.expire(key, ttl)
                await pipe.execute()

    async def put_and_read(
        self, room: RoomRef, members: list[str], expires: float, now: float
    ) -> list[str]:
        """``put``, then ``members``: one round trip for a joining connection."""
        key = self._key(room)
        current: list[str]  # decode_responses: members come back as str
        async with self.client(room).pipeline(transaction=False) as pipe:
            pipe.zadd(key, dict.fromkeys(members, expires))
            pipe.expire(key, int(settings.PRESENCE_TTL_SECONDS * 2) + 1)
            pipe.zrangebyscore(key, f"({now}", "+inf")
            *_, current = await pipe.execute()
        return current

    async def remove(self, room: RoomRef, members: list[str]) -> None:
        if members:
            await self.client(room).zrem(self._key(room), *members)

    async def sweep_many(self, rooms: list[RoomRef], now: float) -> list[RoomRef]:
        """Drop expired entries of ``rooms``; the rooms that had some."""
        swept = []
        for client, batch in self._batches(rooms):
            async with client.pipeline(transaction=False) as pipe:
                for room in batch:
                    pipe.zremrangebyscore(self._key(room), "-inf", now)
                removed = await pipe.execute()
            swept += [room for room, count in zip(batch, removed, strict=True) if count]
        return swept

    async def members(self, room: RoomRef, now: float) -> list[str]:
        # decode_responses: str, which redis-py's annotations do not follow.
        return await self.client(room).zrangebyscore(self._key(room), f"({now}", "+inf")  # type: ignore[return-value]

    async def claim_publish(
        self, room: RoomRef, digest: str, force: bool = False
    ) -> bool:
        published_key = self._key(room, ":published")
        if not force and await self.published(room) == digest:
            return False
        interval_ms = int(settings.PRESENCE_BROADCAST_SECONDS * 1000)
        if not await self.client(room).set(
            self._key(room, ":throttle"), INSTANCE_ID, nx=True, px=interval_ms
        ):
            return False
        await self.client(room).set(
            published_key, digest, ex=int(settings.PRESENCE_TTL_SECONDS * 2) + 1
        )
        return True

    async def published(self, room: RoomRef) -> str | None:
        """The digest of ``room``'s last published snapshot, if any."""
        # decode_responses: str, which redis-py's annotations do not follow.
        digest: str | None = await self.client(room).get(self._key(room, ":published"))  # type: ignore[assignment]
        return digest


class Presence:
    """This process's connections per room, mirrored into the store.

    One per event loop: Redis clients belong to the loop that made them.
    """

    def __init__(self) -> None:
        self.store: MemoryStore | RedisStore = (
            RedisStore() if settings.REDIS_URL else _shared_memory_store()
        )
        self.users: dict[RoomRef, Counter[str]] = defaultdict(Counter)
        self.anonymous: dict[RoomRef, set[str]] = defaultdict(set)
        self.dirty: set[RoomRef] = set()
        self.task: asyncio.Task[None] | None = None
        # The store failed (Redis unreachable): frames are this process's
        # view, marked unavailable, until a full refresh succeeds.
        self.stale = False
        # Every local entry is to be written again (the store failed, or the
        # channel layer lost events: a restarted Redis has forgotten them).
        self.rewrite = False
        # Rooms whose next snapshot goes out even if it equals the last one
        # published: that one may have been lost with the channel layer.
        self.forced: set[RoomRef] = set()

    def _local_members(self, room: RoomRef) -> list[str]:
        return [_member("u", user) for user in self.users[room]] + [
            _member("a", conn) for conn in self.anonymous[room]
        ]

    async def join(
        self, room: RoomRef, user: str | None, connection: str
    ) -> dict[str, object]:
        """Count a connection in; the ``presence`` frame it gets (one store
        call for both). Makes sure the refresh loop runs."""
        if user is None:
            self.anonymous[room].add(connection)
            member = _member("a", connection)
        else:
            self.users[room][user] += 1
            member = _member("u", user)
        self.dirty.add(room)
        self._ensure_loop()
        if not self.stale:
            try:
                started = time.perf_counter()
                async with asyncio.timeout(JOIN_WAIT_SECONDS):
                    current = await self.store.put_and_read(
                        room, [member], self._expiry(), time.time()
                    )
                metrics.observe_call(_JOIN_SECONDS, started)
                return self._frame(room, current)
            except Exception as exc:  # Redis unreachable: degrade, not fail
                self._went_stale(exc)
        return self._frame(room, self._local_members(room), available=False)

    async def leave(self, room: RoomRef, user: str | None, connection: str) -> None:
        """Count a connection out; the entry goes with the user's last one."""
        gone: list[str] = []
        if user is None:
            self.anonymous[room].discard(connection)
            gone.append(_member("a", connection))
        else:
            self.users[room][user] -= 1
            if self.users[room][user] <= 0:
                del self.users[room][user]
                gone.append(_member("u", user))
        if not self.users[room] and not self.anonymous[room]:
            self.users.pop(room, None)
            self.anonymous.pop(room, None)
        self.dirty.add(room)
        if not self.stale:
            try:
                async with asyncio.timeout(JOIN_WAIT_SECONDS):
                    await self.store.remove(room, gone)
            except Exception as exc:  # its entry expires by itself
                self._went_stale(exc)

    def _went_stale(self, exc: Exception) -> None:
        metrics.presence_errors.inc()
        self.rewrite = True
        if not self.stale:
            self.stale = True
            logger.warning(
                "presence store failed (%s); serving this instance's view, "
                "marked unavailable, until it answers",
                exc.__class__.__name__,
            )

    async def frame(self, room: RoomRef) -> dict[str, object]:
        """The ``presence`` frame for ``room`` as it is now."""
        return self._frame(room, await self.store.members(room, time.time()))

    def _frame(
        self, room: RoomRef, members: list[str], available: bool = True
    ) -> dict[str, object]:
        users, anonymous = _snapshot(members)
        return protocol.presence_frame(
            room=room.slug, users=set(users), anonymous=anonymous, available=available
        )

    def _expiry(self) -> float:
        return time.time() + settings.PRESENCE_TTL_SECONDS

    def _ensure_loop(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Refresh, sweep and broadcast until this process serves no room."""
        refreshed = swept = time.monotonic()
        while self.users or self.anonymous or self.dirty:
            await asyncio.sleep(settings.PRESENCE_BROADCAST_SECONDS)
            now = time.monotonic()
            try:
                if self.stale or self.rewrite:
                    # Everything local, written again, then every room gets
                    # a snapshot.
                    await self._refresh()
                    if self.stale:
                        logger.info("presence store answers again")
                    self.stale = self.rewrite = False
                    refreshed = now
                    self.forced = set(self.users.keys() | self.anonymous.keys())
                    self.dirty |= self.forced
                if now - refreshed >= settings.PRESENCE_REFRESH_SECONDS:
                    refreshed = now
                    await self._refresh()
                if now - swept >= SWEEP_EVERY_SECONDS:
                    swept = now
                    await self._sweep()
                await self._broadcast()
            except Exception as exc:  # a Redis outage must not end presence
                self._went_stale(exc)

    async def _refresh(self) -> None:
        rooms = self.users.keys() | self.anonymous.keys()
        members = {room: self._local_members(room) for room in rooms}
        await self.store.put_many(members, self._expiry())

    async def _sweep(self) -> None:
        rooms = list(self.users.keys() | self.anonymous.keys())
        self.dirty.update(await self.store.sweep_many(rooms, time.time()))

    def resync(self) -> None:
        """Events may have been lost (core.fanout): write every local entry
        again (a restarted Redis has forgotten them) and send every room a
        fresh snapshot."""
        self.rewrite = True
        self._ensure_loop()

    async def _broadcast(self) -> None:
        for room in list(self.dirty):
            # Clean before the snapshot is read: a join or leave during the
            # awaits below marks the room again, for the next round (cleaned
            # after them, it was lost until the room's next change).
            self.dirty.discard(room)
            done = False
            try:
                snapshot = _snapshot(await self.store.members(room, time.time()))
                forced = room in self.forced
                if await self.store.claim_publish(room, _digest(snapshot), forced):
                    users, anonymous = snapshot
                    frame = protocol.presence_frame(
                        room=room.slug, users=set(users), anonymous=anonymous
                    )
                    await publish(
                        room_group(room.id), {"type": "room.presence", "frame": frame}
                    )
                    self.forced.discard(room)
                    done = True
                elif not forced:
                    done = await self._unchanged(room, snapshot)
            finally:
                if not done:
                    self.dirty.add(room)

    async def _unchanged(self, room: RoomRef, snapshot: Snapshot) -> bool:
        store = self.store
        digest = _digest(snapshot)
        if isinstance(store, MemoryStore):
            return store.published.get(room) == digest
        return await store.published(room) == digest


_memory_store: MemoryStore | None = None


def _shared_memory_store() -> MemoryStore:
    # Shared by every event loop of the process, like the in-memory layer.
    global _memory_store
    if _memory_store is None:
        _memory_store = MemoryStore()
    return _memory_store


_by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Presence]" = (
    weakref.WeakKeyDictionary()
)


def get_presence() -> Presence:
    """The ``Presence`` of the running event loop."""
    loop = asyncio.get_running_loop()
    presence = _by_loop.get(loop)
    if presence is None:
        presence = _by_loop[loop] = Presence()
    return presence


def reset_for_tests() -> None:
    """Forget all in-process state (tests start from an empty room)."""
    global _memory_store
    _memory_store = None
    for presence in list(_by_loop.values()):
        if presence.task is not None:
            presence.task.cancel()
    _by_loop.clear()
