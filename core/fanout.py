"""Per-process fan-out: one channel-layer member per process, not per socket.

Every process joins a room's channel-layer group once, with one channel of
its own, and hands each event to its local connections itself, encoding a
message frame once for all of them. Publishing is unchanged (``group_send``
in ``core.services``), so the API, ``announce`` and any other Channels code
reach every instance as before.

This is what makes fan-out cheap: with one layer channel per connection,
the process decodes every event once per connection and Channels
dispatches each copy through a thread hop (and channels_redis' list-based
layer stores a copy per connection in Redis).

The hub also survives a Redis outage by itself: it hears its subscription
reconnect and probes it, and when events may have been lost (a reconnect,
or a probe or a receive failed), it re-joins its groups once Redis answers
and asks every local connection to re-check its access and catch up from
the database on what it may have missed.

A publish can also be lost where no outage shows: the publisher killed
between commit and publish, a publish that timed out, the publisher alone
cut off from Redis. Clients notice a gap only when a later message arrives,
so in a quiet room nobody would. The hub therefore reads its rooms'
``last_seq`` now and then, and has every connection not yet told of it
catch up (``_check_tails_forever``): every committed message reaches every
open connection within ``DELIVERY_BOUND_SECONDS``.
"""

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from core import db, delivery, layer_watch, logs, metrics, services, shards
from core.delivery import (
    DONE,
    AccessRecheck,
    Delivery,
    HubEvent,
    LiveMessage,
    Outcome,
    RoomChanged,
    Shared,
)
from core.presence import get_presence

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0
PROBE_TYPE = "hub.probe"


class Listener(Protocol):
    """What a hub member (a ``RoomConsumer``) offers the hub."""

    # Decides what becomes of each event, once (core.delivery).
    delivery: Delivery

    async def carry_out(self, outcome: Outcome, event: HubEvent) -> None:
        """Do what ``delivery.decide`` left to the connection."""

    def catch_up(self) -> None:
        """Re-check access, then fetch from the database what live delivery
        may have missed (above ``delivery.told_through``)."""


class Watcher(Protocol):
    """A connection watching other rooms for the rooms sidebar: it gets
    their ``activity`` and ``room`` frames, nothing else (section 18)."""

    async def watched(self, shared: Shared | None, epoch: int) -> None:
        """A frame of a watched room, encoded once; None: that room's access
        changed, read the watched rooms again. ``epoch``: the hub's now."""


class Hub:
    """The groups this process listens to, and who listens locally."""

    def __init__(self) -> None:
        # CHANNEL_LAYERS is always set (backend/settings.py): never None.
        self.layer: BaseChannelLayer = get_channel_layer()  # type: ignore[assignment]  # see above
        self.channel: str | None = None
        self.members: dict[str, set[Listener]] = defaultdict(set)
        # Watchers, apart from members: they are sent activity, never
        # caught up or tail-checked (their rooms frame is read again).
        self.watchers: dict[str, set[Watcher]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.lock = asyncio.Lock()
        # Times live events may have been lost (each made good by a catch-up).
        self.gaps = 0
        # Goes up with every gap: a revocation may have been lost with it, so
        # live messages wait until a listener's access is read again.
        self.epoch = 0
        # Catch-ups started because a room's last_seq ran ahead of what a
        # connection had been told (a lost publish; _check_tails_forever).
        self.tail_catch_ups = 0
        # One probe group per Redis server (shard), joined by this hub's
        # channel: every round of probes crosses every shard, so an outage
        # of any of them shows, not only of the one holding the channel.
        stem = f"hub-probe.{uuid.uuid4().hex[:12]}"
        self.probe_groups = [
            shards.group_on(shard, stem) for shard in range(max(1, shards.count()))
        ]
        self.probes_joined = False
        # Every shard's subscription connection is heard reconnecting.
        self.watching = False
        self._reset_probes()

    def _reset_probes(self) -> None:
        self.probes_sent = 0
        self.probe_sent_at = 0.0
        # The latest probe back from each shard.
        self.probes_back_from = [0] * len(self.probe_groups)
        # While events may have been lost: the last probe sent before that
        # was noticed. One sent later coming back means the layer delivers.
        self.lost_after_probe: int | None = None

    async def subscribe(self, group: str, listener: Listener) -> None:
        """Deliver ``group``'s events to ``listener`` from now on.

        Never fails for want of Redis: while the layer is unreachable the
        listener is counted in here, and the hub joins its group in Redis
        once the layer delivers again (``_recover``), then has it catch up.
        """
        async with self.lock:
            first = not self._listened(group)
            self.members[group].add(listener)
            await self._join_layer(group, first)

    async def watch(self, group: str, watcher: Watcher) -> None:
        """Send ``group``'s activity to ``watcher`` from now on: the group is
        joined once per process, for members and watchers alike."""
        async with self.lock:
            first = not self._listened(group)
            self.watchers.setdefault(group, set()).add(watcher)
            await self._join_layer(group, first)

    def _listened(self, group: str) -> bool:
        return bool(self.members.get(group)) or bool(self.watchers.get(group))

    async def _join_layer(self, group: str, first: bool) -> None:
        """Join ``group`` in the layer if ``first``; start the hub's tasks."""
        if not self.tasks:
            self._reset_probes()
            loop = asyncio.get_running_loop()
            self.tasks = [
                loop.create_task(self._receive_forever()),
                loop.create_task(self._probe_forever()),
                loop.create_task(self._refresh_forever()),
                loop.create_task(self._check_tails_forever()),
            ]
        if self.lost_after_probe is not None:
            return  # an outage is known: recovery joins every group
        try:
            async with asyncio.timeout(settings.PUBLISH_TIMEOUT_SECONDS):
                await self._ensure_channel()
                if first:
                    await _twice(self.layer.group_add, group, self.channel)
        except Exception as exc:
            self._events_may_be_lost(
                f"joining {group} failed: {exc.__class__.__name__}"
            )

    @property
    def probes_back(self) -> int:
        """The latest probe round that came back from every shard."""
        return min(self.probes_back_from)

    async def _ensure_channel(self) -> None:
        if self.channel is None:
            self.channel = await _twice(layer_watch.new_channel, self.layer, "hub.")
            self.probes_joined = self.watching = False
        if not self.probes_joined:
            for group in self.probe_groups:
                await _twice(self.layer.group_add, group, self.channel)
            self.probes_joined = True
            # Now every shard has a subscription (each holds a probe group).
            self._watch_reconnects()

    async def unsubscribe(self, group: str, listener: Listener) -> None:
        """Stop delivering ``group`` to ``listener``; leave it if unused."""
        async with self.lock:
            members = self.members.get(group)
            if members is None:
                return
            members.discard(listener)
            if members:
                return
            del self.members[group]
            await self._leave_layer(group)

    def stop_watching(self, group: str, watcher: Watcher) -> None:
        """No more of ``group`` for ``watcher``, at once (no await: an access
        revocation must not wait for the lock); ``unwatch`` leaves the layer."""
        watchers = self.watchers.get(group)
        if watchers is not None:
            watchers.discard(watcher)

    async def unwatch(self, group: str, watcher: Watcher) -> None:
        """Stop watching ``group``; leave it if nobody listens to it."""
        async with self.lock:
            watchers = self.watchers.get(group)
            if watchers is None:
                return
            watchers.discard(watcher)
            if watchers:
                return
            del self.watchers[group]
            await self._leave_layer(group)

    async def _leave_layer(self, group: str) -> None:
        if self._listened(group):
            return
        if self.channel is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(settings.PUBLISH_TIMEOUT_SECONDS):
                    await self.layer.group_discard(group, self.channel)
        if not self.members and not any(self.watchers.values()):
            self.watchers.clear()
            # Nobody left: stop, and take a new channel next time (a
            # cancelled receive ends the channel on the pub/sub layer).
            if self.channel is not None and self.probes_joined:
                for probe_group in self.probe_groups:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(settings.PUBLISH_TIMEOUT_SECONDS):
                            await self.layer.group_discard(probe_group, self.channel)
            for task in self.tasks:
                task.cancel()
            self.tasks = []
            self.channel = None
            self.probes_joined = self.watching = False

    def _watch_reconnects(self) -> None:
        # The probes notice an outage only if it spans one; a reconnect of
        # a subscription (one per shard) is the outage itself, however short.
        if self.watching:
            return
        self.watching = layer_watch.on_reconnect(self.layer, self._layer_reconnected)
        if not self.watching and not isinstance(self.layer, InMemoryChannelLayer):
            logger.warning(
                "cannot watch %s's reconnects; outages shorter than %.1f s "
                "are noticed by the periodic access re-check only",
                self.layer.__class__.__name__,
                settings.HUB_PROBE_SECONDS,
            )

    def _layer_reconnected(self, connection: object) -> None:
        self._events_may_be_lost("the channel layer's subscription reconnected")

    def _events_may_be_lost(self, reason: str) -> None:
        """Note a gap in live events: the prober catches everyone up."""
        # Every sign of loss moves the epoch, even within a gap already
        # noticed: an access check read before it may predate a lost
        # revocation.
        self.epoch += 1
        # A restarted Redis has forgotten the probe groups too (the list
        # layer keeps groups in Redis): join them again before the next
        # probe, or no probe would come back to end the gap.
        self.probes_joined = False
        if self.lost_after_probe is None:
            self.gaps += 1
            logger.warning(
                "live events may have been lost (%s); clients catch up once "
                "the channel layer delivers again (gap %d)",
                reason,
                self.gaps,
            )
            self.lost_after_probe = self.probes_sent

    async def _receive_forever(self) -> None:
        delay = RETRY_MIN_SECONDS
        while True:
            if self.channel is None:  # not made yet: Redis was down
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            try:
                event = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A restarted Redis has forgotten the list-based layer's
                # groups; the prober re-joins them.
                self._events_may_be_lost(f"receive failed: {exc.__class__.__name__}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = RETRY_MIN_SECONDS
            if event.get("type") == PROBE_TYPE:
                self._probe_back(event.get("shard", 0), event.get("n", 0))
                continue
            await self._dispatch(event)
            # The pub/sub layer hands out queued events without awaiting:
            # without this, a backlog would keep everything else in the
            # process (publishes, acks, reads) waiting until it is gone.
            await asyncio.sleep(0)

    def _probe_back(self, shard: int, number: int) -> None:
        # One shard's subscription delivers in order, so a probe that
        # overtakes an earlier one from the same shard means that one, and
        # whatever came with it, was lost.
        if not 0 <= shard < len(self.probes_back_from):
            return  # another configuration's (a deploy changing REDIS_URLS)
        if number > self.probes_back_from[shard] + 1:
            self._events_may_be_lost(f"a probe did not come back (shard {shard})")
        if number == self.probes_sent:  # the latest: its send time is known
            metrics.observe_call(_PROBE_SECONDS, self.probe_sent_at)
        self.probes_back_from[shard] = max(self.probes_back_from[shard], number)

    async def _probe_forever(self) -> None:
        """Notice lost events, and have every connection fetch them.

        channels_redis' pub/sub layer reconnects and subscribes again by
        itself, silently (its on_disconnect/on_reconnect hooks are no longer
        called: channels_redis issue 406), and what was published meanwhile
        is gone. The hub hears those reconnects (``_watch_reconnects``); a
        subscription that stays connected but stops delivering, or a layer
        it cannot watch, shows in the probes: every HUB_PROBE_SECONDS the
        hub sends a numbered probe to a group of its own on every Redis
        server (shard), which its channel has joined, so that an outage of
        any shard shows, not only of the channel's. Events may have been lost
        when a probe cannot be sent, when one is skipped, when none has come
        back for HUB_PROBE_TIMEOUT_SECONDS, or when a receive fails. Once a
        probe sent after that comes back, the hub re-joins its groups (a
        restarted Redis has forgotten them on the list-based layer) and asks
        every local connection to catch up from the database.
        """
        interval = settings.HUB_PROBE_SECONDS
        while True:
            await asyncio.sleep(interval)
            if self.lost_after_probe is not None and (
                self.probes_back > self.lost_after_probe
            ):
                await self._recover()
            self.probes_sent += 1
            self.probe_sent_at = time.perf_counter()
            try:
                if self.channel is None or not self.probes_joined:
                    async with self.lock, asyncio.timeout(interval):
                        await self._ensure_channel()
                self._watch_reconnects()
                await asyncio.wait_for(
                    self._send_probes(self.probes_sent),
                    settings.HUB_PROBE_TIMEOUT_SECONDS,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._events_may_be_lost(f"probe not sent: {exc.__class__.__name__}")
                continue
            # Probes queue behind events, so allow a backlog this long.
            unanswered = self.probes_sent - self.probes_back - 1
            if unanswered * interval > settings.HUB_PROBE_TIMEOUT_SECONDS:
                self._events_may_be_lost("probes are not coming back")

    async def _send_probes(self, number: int) -> None:
        """Probe ``number`` to every shard's probe group at once."""
        await asyncio.gather(
            *(
                self.layer.group_send(
                    group, {"type": PROBE_TYPE, "n": number, "shard": shard}
                )
                for shard, group in enumerate(self.probe_groups)
            )
        )

    async def _recover(self) -> None:
        try:
            async with asyncio.timeout(settings.HUB_PROBE_TIMEOUT_SECONDS):
                await self._rejoin()
        except Exception as exc:
            logger.info("re-joining groups failed (%r); retrying", exc)
            return
        # Joined again, so anything committed from here on is delivered
        # live; fetch what was lost now, not when the next event happens to
        # come (a quiet room has none).
        logger.info("channel layer delivers again; %d groups", len(self.members))
        self.lost_after_probe = None
        self._catch_up_everyone()
        get_presence().resync()  # presence updates may have been lost too

    async def _rejoin(self) -> None:
        for group in [*self.probe_groups, *{*self.members, *self.watchers}]:
            # None before the first channel (Redis was down): the layer
            # raises, and both callers retry later.
            await self.layer.group_add(group, self.channel)  # type: ignore[arg-type]  # see above

    async def _refresh_forever(self) -> None:
        # channels_redis's list-based layer (and the in-memory one) forget
        # group members after group_expiry; re-join well before that.
        while True:
            await asyncio.sleep(settings.GROUP_REFRESH_SECONDS)
            with contextlib.suppress(Exception):
                await self._rejoin()

    def _catch_up_everyone(self) -> None:
        listeners = {member for group in self.members.values() for member in group}
        for listener in listeners:
            listener.catch_up()

    async def _check_tails_forever(self) -> None:
        """Every committed message reaches every connection in time.

        Every ``DELIVERY_BOUND_SECONDS / 2.5`` the hub reads the ``last_seq``
        of every room it serves (one query). At the next check, once a probe
        sent after that read has come back (so whatever Redis had by then
        has been dispatched here), every connection not yet told of that
        ``seq`` catches up from the database: its message was committed a
        whole interval ago, and its publish was lost. A publish merely
        slower than that makes a duplicate, which clients drop by ``seq``.
        Outages are the probes' to notice; this waits while they show one.
        """
        interval = settings.DELIVERY_BOUND_SECONDS / 2.5
        read: dict[int, int] = {}
        probe_at_read = 0
        while True:
            await asyncio.sleep(interval)
            delivering = (
                self.lost_after_probe is None and self.probes_back > probe_at_read
            )
            if read and delivering:
                self._catch_up_tails(read)
            rooms = [
                room_id
                for group in self.members
                if (room_id := services.room_id_of(group)) is not None
            ]
            try:
                read = await db.run(services.last_seqs)(rooms) if rooms else {}
            except Exception as exc:  # the database is down: next time
                read = {}
                logs.limited(
                    logger,
                    logging.WARNING,
                    "hub.tail_check",
                    "reading rooms' last_seq failed (%s)",
                    exc.__class__.__name__,
                )
            probe_at_read = self.probes_sent

    def _catch_up_tails(self, last_seqs: dict[int, int]) -> None:
        for room_id, last_seq in last_seqs.items():
            behind = [
                listener
                for listener in self.members.get(services.room_group(room_id), ())
                if listener.delivery.told_through < last_seq
            ]
            if not behind:
                continue
            self.tail_catch_ups += len(behind)
            logs.limited(
                logger,
                logging.INFO,
                "hub.tail_catch_up",
                "room %d: seq %d was not delivered live; %d connections catch up",
                room_id,
                last_seq,
                len(behind),
            )
            for listener in behind:
                listener.catch_up()

    async def _dispatch(self, raw: dict[str, Any]) -> None:
        members = self.members.get(raw.get("group", ""))
        if not members:
            if self.watchers:
                await self._to_watchers(raw, None)
            return
        # Typed (a message frame encoded) once for every local connection,
        # whose Delivery decides what becomes of it; a sequential loop beats
        # a task or gather per recipient, and a plain call beats both where
        # nothing needs awaiting (see docs/performance.md).
        try:
            event = delivery.from_layer(raw)
        except (KeyError, TypeError, ValueError):
            logger.exception("malformed %s event", raw.get("type"))
            return
        if event is None:
            return
        epoch = self.epoch
        for listener in list(members):
            try:
                outcome = listener.delivery.decide(event, epoch)
                if outcome is not DONE:
                    await listener.carry_out(outcome, event)
            except Exception:
                logger.exception("delivering %s failed", raw.get("type"))
        if type(event) is LiveMessage:
            # Once per message and process, never per socket.
            _MESSAGE_FRAMES_SENT.inc(len(members))
            _observe_lag(event.sent_at)
        if self.watchers:  # one test per event: nothing per member
            await self._to_watchers(raw, event)

    async def _to_watchers(self, raw: dict[str, Any], event: HubEvent | None) -> None:
        """A watched room's event for its watchers: a message, edit or
        deletion as ``activity``, a change of the room as ``room``, each
        encoded once; an access change as "read your rooms again"."""
        watchers = self.watchers.get(raw.get("group", ""))
        if not watchers:
            return
        try:
            if event is None:
                event = delivery.from_layer(raw)
            shared: Shared | None
            if type(event) is LiveMessage:
                shared = delivery.activity(raw["message"])
            elif type(event) is RoomChanged:
                shared = event.shared
            elif type(event) is AccessRecheck:
                shared = None
            else:
                return  # typing, presence: not for the sidebar
        except (KeyError, TypeError, ValueError):
            logger.exception("malformed %s event", raw.get("type"))
            return
        epoch = self.epoch
        for watcher in list(watchers):
            try:
                await watcher.watched(shared, epoch)
            except Exception:
                logger.exception("delivering activity failed")


_PROBE_SECONDS = metrics.redis_seconds.labels("probe")
_MESSAGE_FRAMES_SENT = metrics.frames_sent.labels("message")


def _observe_lag(sent_at: str) -> None:
    """Commit (the message's ``sent_at``) to now, written to the sockets."""
    with contextlib.suppress(ValueError):
        committed = datetime.fromisoformat(sent_at).timestamp()
        metrics.delivery_lag_seconds.observe(max(0.0, time.time() - committed))


async def _twice(call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``call``, and once more if it fails.

    After a Redis restart the pub/sub layer's connection may still look
    open; the first subscribe on it fails and reconnects it (redis-py
    subscribes everything again then), so the second one succeeds. Without
    this, the first handshakes after Redis returns would fail.
    """
    try:
        return await call(*args)
    except Exception:
        return await call(*args)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = (
    weakref.WeakKeyDictionary()
)


def get_hub() -> Hub:
    """The hub of the running event loop (channel layers are per loop)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub


@metrics.reading(
    "switchboard_hub_gaps",
    "Times this process's hub found that live events may have been lost "
    "(each made good by a catch-up from the database).",
    counter=True,
)
def _gaps() -> float:
    return float(sum(hub.gaps for hub in list(_hubs.values())))


@metrics.reading(
    "switchboard_hub_tail_catch_ups",
    "Connections sent to catch up because their room's last_seq ran ahead "
    "of what they had been told (a lost publish; the delivery bound).",
    counter=True,
)
def _tail_catch_ups() -> float:
    return float(sum(hub.tail_catch_ups for hub in list(_hubs.values())))


@metrics.reading(
    "switchboard_hub_groups",
    "Channel-layer groups (rooms and users) this process listens to.",
)
def _groups() -> float:
    return float(
        sum(len({*hub.members, *hub.watchers}) for hub in list(_hubs.values()))
    )
