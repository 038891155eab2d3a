"""``RoomConsumer``: one WebSocket connection to one room.

Thin by design: frames are parsed by ``core.protocol``, every read and write
goes through ``core.services``, presence through ``core.presence``, and live
events arrive from this process's ``core.fanout`` hub rather than from a
channel-layer channel of the connection's own.
"""

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from core import (
    access,
    admission,
    auth,
    clientaddr,
    db,
    limits,
    logcontext,
    logs,
    metrics,
    protocol,
    reads,
    services,
)
from core.collector import get_collector
from core.delivery import (
    ACCESS,
    DONE,
    SEND_FRAME,
    SEND_TEXT,
    TOO_SLOW,
    AccessRevoked,
    Delivery,
    HubEvent,
    LiveMessage,
    Presence,
    ReadMoved,
    RoomChanged,
    RoomsChanged,
    Shared,
    Typing,
)
from core.fanout import get_hub
from core.models import Room
from core.output import OutputGate
from core.presence import RoomRef, get_presence
from core.protocol import ProtocolError
from core.servers import backpressure
from core.servers import dispatch as channels_dispatch
from core.servers.daphne import CLIENT_GONE, CLOSE_GRACE_SECONDS
from core.warden import Grant, get_warden

logger = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4008
CLOSE_TOO_BIG = 4009
CLOSE_SHUTDOWN = 4012
CLOSE_ACCESS_REVOKED = 4403
CLOSE_TOO_MANY = 4429
SHUTDOWN_CLEANUP_SECONDS = 2.0
SHUTDOWN_WINDOW_MIN_SECONDS = 1.0
SHUTDOWN_WINDOW_MAX_SECONDS = 60.0
# Stored messages are read and sent this many at a time (replay, catch-up).
STORED_PAGE = 100


def _exceeds_bytes(text: str, limit: int) -> bool:
    """True if ``text`` encodes to more than ``limit`` UTF-8 bytes."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


@dataclass(frozen=True, slots=True)
class _Accepted:
    """What an accepted handshake read, for its welcome and replay."""

    last_seq: int
    after: int | None
    after_error: ProtocolError | None
    first_page: list[protocol.MessageFrame]
    more: bool
    watch_error: ProtocolError | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a handshake is refused by a limit, and when to try again."""

    code: str
    detail: str
    retry_after: float


# The room id this process last saw for each slug (bounded): a handshake
# joins that room's group before its one database call (see connect()).
_room_ids: dict[str, int] = {}
ROOM_IDS_KEPT = 10_000


def _remember_room_id(slug: str, room_id: int) -> None:
    if len(_room_ids) >= ROOM_IDS_KEPT:
        _room_ids.clear()
    _room_ids[slug] = room_id


_FRAME_TYPES = {
    protocol.SendFrame: "send",
    protocol.EditFrame: "edit",
    protocol.DeleteFrame: "delete",
    protocol.HistoryFrame: "history",
    protocol.TypingFrame: "typing",
    protocol.PingFrame: "ping",
    protocol.ReadFrame: "read",
}
_FRAMES_RECEIVED = {
    name: metrics.frames_received.labels(name)
    for name in (*_FRAME_TYPES.values(), "invalid", "unknown")
}


_FAST_DISPATCH = channels_dispatch.fast_dispatch_verified()


class _ProcessConnections:
    """Connections this process has admitted (``CONNECTIONS_PER_PROCESS``)."""

    count = 0


def open_connections() -> int:
    """How many connections this process holds open."""
    return _ProcessConnections.count


@functools.cache
def shutdown_reason() -> str:
    """The 4012 close reason: over how long clients should spread their
    reconnects, sized once, at shutdown, to the crowd this process sends
    to the rest of the fleet (docs/protocol.md, section 8)."""
    return f"retry_window_ms={shutdown_window_ms()}"


def shutdown_window_ms() -> int:
    """The reconnect window of shutdown_reason(), in ms."""
    window = open_connections() / settings.SHUTDOWN_RECONNECTS_PER_SECOND
    window = min(max(window, SHUTDOWN_WINDOW_MIN_SECONDS), SHUTDOWN_WINDOW_MAX_SECONDS)
    return math.ceil(window * 1000)


class RoomSession(AsyncConsumer):
    """One reader of one room, whatever carries it: what a WebSocket
    (``RoomConsumer``) and a Server-Sent Events stream (``RoomStreamConsumer``)
    share. Admission, opening the room, the grant and the warden, welcome,
    replay and catch-up, the hub's events and leaving live here, once; the
    transport's own steps are the hooks at the end of the class.
    """

    # No channel-layer channel per connection: the process's hub listens for
    # everyone (core.fanout). An unknown alias makes Channels skip its own.
    channel_layer_alias = "per-process-hub-only"
    # Nor Channels' groups (ours are groups_joined). Class attributes, not
    # one list and one None per connection (docs/performance.md, "Memory").
    channel_layer = None  # type: ignore[assignment]  # Channels types it as set
    groups: Any = ()

    # Scopes are plain dicts here, as Channels passes them (its stubs type
    # them as asgiref's TypedDicts; see core/auth.py and core/accesslog.py).
    scope: dict[str, Any]  # type: ignore[assignment]  # see above
    user: access.User  # scope["user"], read once at connect
    room: Room
    slug: str
    grant: Grant
    groups_joined: tuple[str, ...] = ()
    in_presence = False
    accepted = False
    admitted = False
    slot: tuple[str, str] | None = None
    catching_up = False
    catch_up_again = False
    open_gauge: Any = None  # this connection's count in connections_open
    # What this connection's log lines carry (core.logcontext), for lines
    # logged from the hub's tasks on its behalf.
    log_scope: logcontext.Scope | None = None
    # ?watch=1 (section 18): the other rooms it watches (group: slug), the
    # hub epoch its list was read at, activity held while it is read.
    watching = False
    watched_groups: dict[str, str]
    watch_epoch = -1
    watch_held: list[Shared] | None = None
    rewatching = False
    rewatch_again = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What this connection is sent, decided once per event (core.delivery).
        self.delivery = Delivery()
        self.watched_groups = {}

    @property
    def closing(self) -> bool:
        """Closing or closed: nothing more is sent or handled."""
        return self.delivery.closed

    @closing.setter
    def closing(self, value: bool) -> None:
        self.delivery.closed = value

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            if _FAST_DISPATCH:  # no task per event (core.servers.dispatch)
                await channels_dispatch.run(self, scope, receive, send)
            else:
                await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # Daphne cancels every application on SIGTERM: say goodbye (4012
            # on a socket) so clients resume elsewhere, and drop presence.
            await self._close_for_shutdown()
            raise
        except Exception:
            if not self.accepted:
                metrics.handshakes.labels("failed").inc()
            # Channels calls disconnect() only after a websocket.disconnect;
            # a consumer that fails (e.g. Redis down during connect) must not
            # stay subscribed to the hub or counted in presence.
            with contextlib.suppress(Exception):
                await self._leave()
            raise

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without its thread hop per event where the
        fork is verified (core.servers.dispatch)."""
        if _FAST_DISPATCH:
            await channels_dispatch.dispatch(self, message)
        else:
            await super().dispatch(message)

    # --- lifecycle ------------------------------------------------------------

    async def _open(self) -> "_Accepted | None":
        """Admit the handshake, read the room and access, accept or refuse."""
        self.slug = self.scope["url_route"]["kwargs"]["slug"]
        self.user = self.scope["user"]
        self.username = self.user.get_username() if self.user.is_authenticated else None
        self.credential = self.scope.get("credential")
        # The log scope's id (core.accesslog), so that presence entries and
        # log lines name a connection alike.
        log_scope = logcontext.current()
        connection_id = log_scope.get("connection_id") if log_scope else None
        self.connection_id = str(connection_id or uuid.uuid4().hex)
        self.delivery.connection_id = self.connection_id
        self.log_scope = log_scope
        logcontext.annotate(room=self.slug, user_id=self.user.pk)
        self.address = clientaddr.from_scope(self.scope)
        self.last_typing = -math.inf

        refusal = await self._admit()
        if refusal is not None:
            await self._refuse(refusal)
            return None
        # Join the user's group before reading access, and the room's before
        # reading its last_seq and the replay, so that neither a revocation
        # nor a message committed after those reads can be missed. The room's
        # group is keyed by its id, which the read tells: this process joins
        # the id it last saw for the slug first, so in the usual case one
        # database call admits and positions the client; a second is needed
        # only when the slug is new here or now names another room.
        self.delivery.start(get_hub().epoch)
        if self.user.is_authenticated:
            await self._join(services.user_group(self.user.pk))
        try:
            after = self._resume_after()
            after_error = None
        except ProtocolError as exc:
            after, after_error = None, exc
        watch_error = None
        try:
            # Anonymous visitors have no rooms of their own: ignored.
            self.watching = protocol.parse_watch(self.scope["query_string"]) and (
                access.is_signed_in(self.user)
            )
        except ProtocolError as exc:
            watch_error = exc
        limit = min(STORED_PAGE, settings.REPLAY_LIMIT)
        known_id = _room_ids.get(self.slug)
        if known_id is not None:
            await self._join(services.room_group(known_id))
        opened = await db.run_handshake(services.open_room)(
            slug=self.slug, user=self.user, after=after, limit=limit
        )
        if opened is not None and opened.room.pk != known_id:
            if known_id is not None:
                await self._leave_group(services.room_group(known_id))
            _remember_room_id(self.slug, opened.room.pk)
            await self._join(services.room_group(opened.room.pk))
            opened = await db.run_handshake(services.open_room)(
                slug=self.slug, user=self.user, after=after, limit=limit
            )
            if (
                opened is not None
                and services.room_group(opened.room.pk) not in self.groups_joined
            ):
                opened = None  # the slug changed hands again meanwhile
        if opened is None or self.closing:
            await self._leave()
            metrics.handshakes.labels("refused").inc()
            await self._deny()  # before accept: HTTP 403, unknown or private alike
            return None
        room = self.room = opened.room
        self.grant = self._grant(room)

        wire = self._locate_wire()
        self.delivery.accepted(wire, OutputGate(wire, self._too_slow))
        await self._accept()
        self.accepted = True
        metrics.handshakes.labels("accepted").inc()
        self.open_gauge = metrics.connections_open.labels(
            "private" if room.is_private else "public"
        )
        self.open_gauge.inc()
        return _Accepted(
            room.last_seq, after, after_error, opened.page, opened.more, watch_error
        )

    async def _greet(self, accepted: "_Accepted") -> None:
        """Welcome, replay, then presence, once accepted."""
        room = self.room
        get_warden().watch(self)
        self.delivery.welcome_seq = accepted.last_seq
        await self.send_frame(
            protocol.welcome_frame(
                room=self.slug, user=self.username, last_seq=accepted.last_seq
            )
        )
        if accepted.after_error is not None:
            await self.send_frame(protocol.error_frame(accepted.after_error))
        if accepted.watch_error is not None:
            await self.send_error(accepted.watch_error)
        if accepted.after is not None:
            await self._replay(accepted.after, accepted.first_page, accepted.more)
        await self._release_held()
        if self.closing:
            return
        if self.delivery.checked_epoch != get_hub().epoch:
            await self._catch_up()  # a gap while connecting: read access again
        presence = get_presence()
        self.in_presence = True
        room_ref = RoomRef(room.pk, self.slug)
        await self.send_frame(
            await presence.join(room_ref, self.username, self.connection_id)
        )
        if self.watching:
            self.rewatch()

    async def _admit(self) -> Refusal | None:
        """Count the connection in, or say which limit refuses it.

        Cheapest first: the process's own count, then the address's
        handshake rate, then the user's (or anonymous address's) open
        connections across every instance.
        """
        if _ProcessConnections.count >= settings.CONNECTIONS_PER_PROCESS:
            return Refusal(
                protocol.TOO_MANY_CONNECTIONS,
                "This server is full; try again shortly.",
                settings.CONNECTION_RETRY_SECONDS,
            )
        _ProcessConnections.count += 1
        self.admitted = True
        if self.user.is_authenticated:
            slot = ("connections", f"user:{self.user.pk}")
            limit = settings.CONNECTIONS_PER_USER
            detail = f"You have {limit} connections open already; close some."
        else:
            slot = ("anonymous", self.address)
            limit = settings.ANONYMOUS_CONNECTIONS_PER_ADDRESS
            detail = "Too many anonymous connections from your address; sign in."
        # The address's handshake rate first, then the slot: one Redis call.
        toll = limits.Toll(
            "handshakes",
            self.address,
            settings.HANDSHAKE_RATE_PER_ADDRESS,
            settings.HANDSHAKE_BURST_PER_ADDRESS,
        )
        acquired = await limits.get_slots().acquire_after_toll(
            toll, *slot, self.connection_id, limit
        )
        if acquired.toll_wait:
            return Refusal(
                protocol.TOO_MANY_CONNECTIONS,
                "Too many connection attempts from your address; slow down.",
                acquired.toll_wait,
            )
        if not acquired.admitted:
            return Refusal(
                protocol.TOO_MANY_CONNECTIONS, detail, settings.CONNECTION_RETRY_SECONDS
            )
        self.slot = slot
        return None

    def _grant(self, room: Room) -> Grant:
        if not self.user.is_authenticated:
            return Grant(room.pk, None)
        token_key = self.scope.get("token_key")
        session = self.scope.get("session")
        session_key = None
        if token_key is None and session is not None:
            session_key = session.session_key
        return Grant(room.pk, self.user.pk, token_key, session_key)

    async def _join(self, group: str) -> None:
        await get_hub().subscribe(group, self)
        self.groups_joined += (group,)

    async def _leave_group(self, group: str) -> None:
        await get_hub().unsubscribe(group, self)
        self.groups_joined = tuple(g for g in self.groups_joined if g != group)

    async def _replay(
        self, after: int, first_page: list[protocol.MessageFrame], more: bool
    ) -> None:
        """Send what the client missed, then ``replayed``."""
        count, complete = await self._send_stored(
            after, settings.REPLAY_LIMIT, first_page, more
        )
        if self.closing:
            return
        self.delivery.replayed_through = max(self.delivery.last_seq_sent, after)
        await self.send_frame(
            protocol.replayed_frame(after=after, count=count, complete=complete)
        )

    async def _send_stored(
        self,
        after: int,
        limit: int,
        page: list[protocol.MessageFrame] | None = None,
        more: bool = True,
    ) -> tuple[int, bool]:
        """Send stored messages above ``after``, at most ``limit``, a page at
        a time and only while the client keeps up; (count, complete).

        A client that stops reading gets no more than a quarter of its
        output budget queued; one that has not read that within
        ``OUTPUT_DRAIN_SECONDS`` is closed as too slow.
        """
        sent = 0
        while True:
            if page is None:
                page, more = await db.run(services.replay)(
                    room_id=self.room.pk,
                    after=after,
                    limit=min(STORED_PAGE, limit - sent),
                )
            for message in page:
                if not await self._until_keeping_up():
                    return sent, False
                await self.send_frame(message)
                after = message["seq"]
                self.delivery.sent(after)
                sent += 1
            if not more:
                return sent, True
            if sent >= limit:
                return sent, False
            page = None

    async def _until_keeping_up(self) -> bool:
        """Wait while the client has bulky output unread; False: it is gone."""
        if self.closing:
            return False
        gate = self.delivery.gate
        if gate is None or gate.keeping_up():
            return True
        if await gate.drained(settings.OUTPUT_DRAIN_SECONDS):
            return not self.closing
        self._too_slow("it did not read the messages it asked for")
        return False

    async def _release_held(self) -> None:
        delivery = self.delivery
        for event in delivery.release():
            outcome = delivery.decide(event, delivery.checked_epoch)
            if outcome is not DONE:
                await self.carry_out(outcome, event)

    async def _leave(self) -> None:
        groups, self.groups_joined = self.groups_joined, ()
        hub = get_hub()
        for group in groups:
            await hub.unsubscribe(group, self)
        self.watching = False
        watched, self.watched_groups = self.watched_groups, {}
        for group in watched:
            await hub.unwatch(group, self)
        get_warden().forget(self)
        if self.delivery.gate is not None:
            self.delivery.gate.close()
        if self.admitted:
            self.admitted = False
            _ProcessConnections.count -= 1
            get_collector().connection_closed(_ProcessConnections.count)
        if self.open_gauge is not None:
            self.open_gauge.dec()
            self.open_gauge = None
        if self.slot is not None:
            slot, self.slot = self.slot, None
            await limits.get_slots().release(*slot, self.connection_id)
        # Only a connection that was counted in may count out: a user's
        # entry must not go while their other connections are open.
        if self.in_presence:
            self.in_presence = False
            await get_presence().leave(
                RoomRef(self.room.pk, self.slug), self.username, self.connection_id
            )

    # --- hub events ---------------------------------------------------------------

    async def carry_out(self, outcome: str, event: HubEvent) -> None:
        """Do what ``Delivery.decide`` left to this connection."""
        if outcome is SEND_TEXT and type(event) is LiveMessage:
            await self._send_live(event)  # the server takes ASGI only
        elif outcome is TOO_SLOW:
            self._too_slow("it stopped reading")
        elif outcome is ACCESS:
            if isinstance(event, AccessRevoked):
                await self.access_revoked(event)
            else:
                await self.recheck_access()
        elif outcome is not SEND_FRAME:
            return
        elif type(event) is Typing:
            await self.send_frame(protocol.typing_frame(user=event.user))
        elif type(event) is Presence:
            await self.send_frame(event.frame)
        elif type(event) is RoomChanged:
            await self._send_shared(event.shared)
        elif not self.watching:
            return  # the user's sidebar events are for watching connections
        elif type(event) is ReadMoved:
            await self.send_frame(event.frame)
        elif type(event) is RoomsChanged:
            self.rewatch()

    def _too_slow(self, reason: str) -> None:
        """Close a client that does not keep up, before it costs the room.

        The 4008 close frame waits behind the unread output: a client that
        reads on gets it; one that does not is cut off after a grace period.
        Either way it may reconnect and resume with ?after=.
        """
        if self.closing:
            return
        self.closing = True
        metrics.slow_client_closes.inc()
        with logcontext.use(self.log_scope):  # often called from the hub
            logs.limited(
                logger,
                logging.WARNING,
                "ws.too_slow",
                "closing a client of room %s: %s",
                self.slug,
                reason,
            )
        asyncio.get_running_loop().create_task(self._close_too_slow())

    async def access_revoked(self, event: AccessRevoked) -> None:
        """Close with 4403 if the revocation covers this connection."""
        if event.room not in (None, self.slug):
            self._unwatch_slug(event.room)
            return
        if event.credential not in (None, self.credential):
            return
        await self._close_revoked()

    async def recheck_access(self) -> None:
        """Read this connection's access again; close with 4403 if gone."""
        if self.closing or not hasattr(self, "grant"):
            # Still connecting: its access is read after this event.
            return
        if self.watching:
            self.rewatch()  # the user may have lost (or gained) other rooms
        if not await get_warden().holds(self.grant):
            await self._close_revoked()

    def access_lost(self) -> None:
        """The warden found this connection's access gone."""
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().create_task(self._close_revoked(force=True))

    def access_held(self) -> None:
        """The warden found this connection's access intact. If a catch-up
        after a gap could not run (the database was down), run it now."""
        if not self.closing and self.delivery.checked_epoch != get_hub().epoch:
            self.catch_up()

    async def _close_revoked(self, force: bool = False) -> None:
        if self.closing and not force:
            return
        self.closing = True
        if not self.accepted:
            return  # connect() has not accepted yet: it refuses (403)
        await self._end(CLOSE_ACCESS_REVOKED)

    def catch_up(self) -> None:
        """Send what live delivery may have kept from this client (a
        channel-layer outage, or a lost publish: core.fanout)."""
        if self.closing or self.delivery.held is not None:
            return
        if self.catching_up:
            self.catch_up_again = True  # a new gap: once more when done
            return
        self.catching_up = True
        metrics.catch_ups.inc()
        asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        """Re-check access (a revocation may have been lost too), then send
        the messages stored above the last one this client was told of.

        Until the check passes, the hub gives this connection no live
        messages; those it skipped are read from the database after it.
        """
        try:
            while not self.closing:
                self.catch_up_again = False
                epoch, after = get_hub().epoch, self.delivery.told_through
                if not await get_warden().holds(self.grant):
                    await self._close_revoked()
                    return
                self.delivery.checked_epoch = epoch
                await self._send_stored(after, settings.REPLAY_LIMIT)
                if self.watching and self.watch_epoch != get_hub().epoch:
                    self.rewatch()  # its rooms and counts, read again
                if not self.catch_up_again:
                    return
        except Exception as exc:
            with logcontext.use(self.log_scope):  # started by the hub, often
                logger.info(
                    "catching up failed (%s); the client resumes by itself", exc
                )
        finally:
            self.catching_up = False

    # --- watching other rooms (?watch=1, docs/protocol.md section 18) -----------

    def rewatch(self) -> None:
        """Read the user's rooms again: join the ones now visible, leave the
        rest, send a whole ``rooms`` frame (once at a time; again if asked
        meanwhile)."""
        if self.closing or not self.watching:
            return
        if self.rewatching:
            self.rewatch_again = True
            return
        self.rewatching = True
        asyncio.get_running_loop().create_task(self._rewatch())

    async def _rewatch(self) -> None:
        try:
            while self.watching and not self.closing:
                self.rewatch_again = False
                await self._watch_once()
                if not self.rewatch_again:
                    return
        except Exception as exc:
            with logcontext.use(self.log_scope):
                logger.info("reading the watched rooms failed (%s)", exc)
        finally:
            self.rewatching = False

    async def _watch_once(self) -> None:
        """Join the groups first, then count: activity that comes between
        is held and sent after the ``rooms`` frame unless it counted it."""
        hub = get_hub()
        epoch = hub.epoch  # access (visibility) is read after this
        self.watch_held = []
        user, limit = self.user, settings.WATCH_ROOMS_LIMIT
        ids = await db.run(reads.watched_ids)(user, limit)  # type: ignore[arg-type]  # watching: signed in
        wanted = {
            services.room_group(room_id): slug
            for room_id, slug in ids.items()
            if room_id != self.room.pk  # its own room's frames come anyway
        }
        for group in wanted.keys() - self.watched_groups.keys():
            await hub.watch(group, self)
        for group in self.watched_groups.keys() - wanted.keys():
            await hub.unwatch(group, self)
        if not self.watching:  # it left meanwhile: _leave saw none of these
            for group in wanted:
                await hub.unwatch(group, self)
            return
        self.watched_groups = wanted
        self.watch_epoch = epoch
        rooms, more = await db.run(reads.watched_rooms)(user, limit)  # type: ignore[arg-type]  # as above
        held, self.watch_held = self.watch_held, None
        if self.closing or not self.watching:
            return
        await self.send_frame(protocol.rooms_frame(rooms=rooms, more=more))
        counted = {room["slug"]: room["last_seq"] for room in rooms}
        for shared in held:
            if shared.seq is None or shared.seq > counted.get(shared.room, shared.seq):
                await self._send_shared(shared)

    def _unwatch_slug(self, slug: str | None) -> None:
        """Access to a watched room ended: no more of it, from now."""
        for group, watched_slug in list(self.watched_groups.items()):
            if watched_slug == slug:
                del self.watched_groups[group]
                hub = get_hub()
                hub.stop_watching(group, self)
                asyncio.get_running_loop().create_task(hub.unwatch(group, self))
        self.rewatch()

    async def watched(self, shared: Shared | None, epoch: int) -> None:
        """The hub's frame of a watched room (``core.fanout.Watcher``)."""
        if self.closing:
            return
        if shared is None:
            self.rewatch()  # the room's access changed: read the rooms again
        elif self.watch_epoch != epoch:
            return  # read before a gap: the rooms frame after it counts this
        elif self.watch_held is not None:
            self.watch_held.append(shared)
        else:
            await self._send_shared(shared)

    async def _send_shared(self, shared: Shared) -> None:
        """A frame encoded once for many connections, through the gate."""
        if self._gate_open():
            await self._send_encoded(shared)

    # --- output -------------------------------------------------------------------

    def _gate_open(self) -> bool:
        """May a frame go out now? A client past its output budget is
        closed as too slow (core.output)."""
        outcome = self.delivery.may_send()
        if outcome is TOO_SLOW:
            self._too_slow("its unsent output passed its budget")
        return outcome is SEND_FRAME

    async def send_frame(self, frame: Any) -> None:
        """Every frame but live messages goes out here, through the gate."""
        if not self._gate_open():
            return
        metrics.frames_sent.labels(frame.get("type", "other")).inc()
        await self._send_text(json.dumps(frame, ensure_ascii=False), frame)

    async def send_error(self, error: ProtocolError) -> None:
        metrics.error_frames.labels(error.code).inc()
        await self.send_frame(protocol.error_frame(error))

    # --- the transport's steps ------------------------------------------------------

    def _resume_after(self) -> int | None:
        """The seq the client has read through (None: no resume)."""
        raise NotImplementedError

    def _locate_wire(self) -> backpressure.WriteBuffer | None:
        """The server's write buffer for this connection (None: unseen)."""
        raise NotImplementedError

    async def _accept(self) -> None:
        raise NotImplementedError

    async def _refuse(self, refusal: Refusal) -> None:
        """Tell a client refused by a limit when to come back."""
        raise NotImplementedError

    async def _deny(self) -> None:
        """Refuse, before accepting: unknown room or no access, alike."""
        raise NotImplementedError

    async def _send_text(self, text: str, frame: Any) -> None:
        """Send ``text``, the encoding of ``frame``."""
        raise NotImplementedError

    async def _send_live(self, event: LiveMessage) -> None:
        """Send a live message that the server's buffer declined."""
        raise NotImplementedError

    async def _send_encoded(self, shared: Shared) -> None:
        """Send a frame encoded once for many connections."""
        raise NotImplementedError

    async def _end(self, code: int) -> None:
        """Close the accepted connection with ``code``."""
        raise NotImplementedError

    async def _close_too_slow(self) -> None:
        raise NotImplementedError

    async def _close_for_shutdown(self) -> None:
        raise NotImplementedError


class RoomConsumer(RoomSession, AsyncWebsocketConsumer):
    """The room protocol of docs/protocol.md at ``/ws/rooms/<slug>/``."""

    async def connect(self) -> None:
        """Admit or refuse the handshake, then welcome, replay and presence."""
        ticket = self.scope.get(admission.SCOPE_KEY)
        try:
            accepted = await self._open()
            if accepted is not None and not self.closing:
                await self._greet(accepted)
        finally:
            if ticket is not None:
                ticket.release(completed=True)

    async def _refuse(self, refusal: Refusal) -> None:
        """Accept only to say why, then close with 4429.

        A refusal before accept would be the same HTTP 403 as "no access",
        and browsers see neither status; a close code and an error frame
        tell the client to come back later rather than give up.
        """
        retry_ms = math.ceil(refusal.retry_after * 1000)
        self.closing = True
        await self._leave()
        await self.accept()
        error = ProtocolError(refusal.code, refusal.detail, retry_after_ms=retry_ms)
        metrics.handshakes.labels("limited").inc()
        metrics.error_frames.labels(refusal.code).inc()
        await self.send(text_data=json.dumps(protocol.error_frame(error)))
        await self.close(code=CLOSE_TOO_MANY, reason=f"retry_after_ms={retry_ms}")

    async def disconnect(self, code: int) -> None:
        """Leave the hub's groups and presence."""
        logcontext.annotate(close_code=code)  # for the access log's last line
        await self._leave()

    async def _close_for_shutdown(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SHUTDOWN_CLEANUP_SECONDS):
                # Before accept, a close would be an HTTP 403; the server (or
                # core.admission, for a handshake past its deadline) answers.
                if self.accepted and not self.closing:
                    self.closing = True
                    await self.base_send(
                        {
                            "type": "websocket.close",
                            "code": CLOSE_SHUTDOWN,
                            "reason": shutdown_reason(),
                        }
                    )
                await self._leave()

    # --- client frames ----------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        """Parse one client frame and answer it; bad input gets an error frame."""
        if self.closing:
            return
        if text_data is None:
            _FRAMES_RECEIVED["invalid"].inc()
            await self.send_error(
                ProtocolError(protocol.BAD_FRAME, "Binary frames are not supported.")
            )
            return
        if _exceeds_bytes(text_data, settings.MAX_FRAME_BYTES):
            self.closing = True
            await self.close(code=CLOSE_TOO_BIG)
            return
        frame = None
        try:
            frame = protocol.parse_client_frame(text_data)
            _FRAMES_RECEIVED[_FRAME_TYPES[type(frame)]].inc()
            await self.handle(frame)
        except ProtocolError as exc:
            if frame is None:
                unknown = exc.code == protocol.UNKNOWN_TYPE
                _FRAMES_RECEIVED["unknown" if unknown else "invalid"].inc()
            await self.send_error(exc)
        except Exception:
            # The frame was not done (e.g. the database is down); the client
            # may retry it, and the connection lives on.
            logger.exception("frame handling failed in room %s", self.slug)
            await self.send_error(
                ProtocolError(
                    protocol.INTERNAL_ERROR,
                    "The server could not do this; retry.",
                    client_id=getattr(frame, "client_id", None),
                )
            )

    async def handle(self, frame: protocol.ClientFrame) -> None:
        if isinstance(frame, protocol.SendFrame):
            await self.handle_send(frame)
        elif isinstance(frame, protocol.EditFrame | protocol.DeleteFrame):
            await self.handle_change(frame)
        elif isinstance(frame, protocol.HistoryFrame):
            await self.handle_history(frame)
        elif isinstance(frame, protocol.TypingFrame):
            await self.handle_typing()
        elif isinstance(frame, protocol.ReadFrame):
            await self.handle_read(frame)
        else:
            await self.send_frame(protocol.pong_frame())

    async def check_writer(self, client_id: str | None, refusal: str) -> None:
        """A write (send, edit, delete) needs a signed-in user with a token
        of the send budget: one per user, shared by their sockets on every
        instance and the HTTP API."""
        if not access.is_signed_in(self.user):
            raise ProtocolError(protocol.UNAUTHENTICATED, refusal, client_id=client_id)
        await self.check_rate(
            "send", settings.SEND_RATE_PER_SECOND, settings.SEND_BURST, client_id
        )

    async def handle_send(self, frame: protocol.SendFrame) -> None:
        client_id = frame.client_id
        await self.check_writer(client_id, "Sign in to send messages.")
        try:
            result = await services.post_message(
                room=self.room,
                author=self.user,
                body=frame.body,
                client_id=client_id,
            )
        except (services.AccessDenied, Room.DoesNotExist):
            raise ProtocolError(
                protocol.FORBIDDEN, "You no longer have access to this room.",
                client_id=client_id,
            ) from None  # fmt: skip
        await self.send_frame(
            protocol.ack_frame(client_id=client_id, seq=result.message["seq"])
        )

    async def handle_change(
        self, frame: protocol.EditFrame | protocol.DeleteFrame
    ) -> None:
        """Edit or delete a message: a room event of its own, acked by seq."""
        client_id = frame.client_id
        await self.check_writer(client_id, "Sign in to edit or delete messages.")
        body = frame.body if isinstance(frame, protocol.EditFrame) else None
        try:
            result = await services.change_message(
                room=self.room,
                actor=self.user,
                seq=frame.seq,
                body=body,
                client_id=client_id,
            )
        except services.MessageNotFound:
            raise ProtocolError(
                protocol.NOT_FOUND,
                f"No message {frame.seq} in this room (or it was deleted).",
                client_id=client_id,
            ) from None
        except (services.AccessDenied, Room.DoesNotExist):
            verb = "edit" if body is not None else "delete"
            raise ProtocolError(
                protocol.FORBIDDEN,
                f"You may not {verb} message {frame.seq}.",
                client_id=client_id,
            ) from None
        await self.send_frame(
            protocol.ack_frame(client_id=client_id, seq=result.message["seq"])
        )

    async def handle_history(self, frame: protocol.HistoryFrame) -> None:
        gate = self.delivery.gate
        if gate is not None and not gate.keeping_up():
            # A page is produced only for a client that has read the last.
            raise ProtocolError(
                protocol.RATE_LIMITED,
                "Read what you were sent before asking for more.",
                retry_after_ms=1000,
            )
        await self.check_rate(
            "history", settings.HISTORY_RATE_PER_SECOND, settings.HISTORY_BURST, None
        )
        try:
            messages, has_more = await db.run(services.readable_history)(
                user=self.user, room_id=self.room.pk,
                before=frame.before, after=frame.after, limit=frame.limit,
                max_bytes=gate.low_water if gate is not None else None,
            )  # fmt: skip
        except (services.AccessDenied, Room.DoesNotExist):
            raise ProtocolError(
                protocol.FORBIDDEN, "You no longer have access to this room."
            ) from None
        await self.send_frame(
            protocol.history_frame(messages=messages, has_more=has_more)
        )

    async def handle_typing(self) -> None:
        if not access.is_signed_in(self.user):
            raise ProtocolError(
                protocol.UNAUTHENTICATED, "Sign in to send typing notices."
            )
        now = time.monotonic()
        interval = settings.TYPING_INTERVAL_SECONDS
        if now - self.last_typing < interval:
            return  # relayed at most once per interval; the excess is dropped
        self.last_typing = now
        # The same interval per user and room across sockets, streams and
        # instances (limits.typing_owner).
        if interval > 0 and await limits.atake(
            "typing", limits.typing_owner(self.user.pk, self.room.pk), 1.0 / interval, 1
        ):
            return
        await services.broadcast_typing(
            room_id=self.room.pk,
            user=self.username,  # type: ignore[arg-type]  # signed in: a username
            sender=self.connection_id,
        )

    async def handle_read(self, frame: protocol.ReadFrame) -> None:
        """Mark this room read through ``seq``; answered with ``read``, and
        every watching connection of the user hears if it moved."""
        if not access.is_signed_in(self.user):
            raise ProtocolError(protocol.UNAUTHENTICATED, "Sign in to mark rooms read.")
        await self.check_rate(
            "read", settings.READ_RATE_PER_SECOND, settings.READ_BURST, None
        )
        try:
            result = await services.mark_read(
                user=self.user, room=self.room, seq=frame.seq
            )
        except (services.AccessDenied, Room.DoesNotExist):
            raise ProtocolError(
                protocol.FORBIDDEN, "You no longer have access to this room."
            ) from None
        await self.send_frame(protocol.read_frame(result.state.as_dict()))

    async def check_rate(
        self, name: str, rate: float, burst: int, client_id: str | None
    ) -> None:
        """Take a token from the caller's shared ``name`` bucket, or refuse."""
        wait = await limits.atake(
            name, limits.owner(self.user, self.address), rate, burst
        )
        if wait:
            raise ProtocolError(
                protocol.RATE_LIMITED,
                "Too many requests; slow down.",
                client_id=client_id,
                retry_after_ms=math.ceil(wait * 1000),
            )

    # Channels' own send takes a close code too (it hands ``close`` to
    # ``close(code)``); its stubs say bool only. The override of
    # AsyncConsumer.send is AsyncWebsocketConsumer's (its stubs ignore it too).
    async def send(  # type: ignore[override]  # see above
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """A frame for the client, where a client that has gone is no error.

        Servers raise for a send after the client left (``CLIENT_GONE``).
        The disconnect event that follows cleans up; until then nothing more
        is sent.
        """
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)  # type: ignore[arg-type]  # a close code: see above
        except CLIENT_GONE:
            self.closing = True

    async def _close_too_slow(self) -> None:
        with contextlib.suppress(Exception):
            await self.base_send({"type": "websocket.close", "code": CLOSE_TOO_SLOW})  # type: ignore[arg-type]  # a plain dict event
        await asyncio.sleep(CLOSE_GRACE_SECONDS)
        if self.delivery.wire is not None:
            with contextlib.suppress(Exception):
                self.delivery.wire.drop()

    # --- RoomSession's steps, on a WebSocket ------------------------------------

    def _resume_after(self) -> int | None:
        return protocol.parse_resume_after(self.scope["query_string"])

    def _locate_wire(self) -> backpressure.WriteBuffer | None:
        return backpressure.locate(self.base_send, settings.OUTPUT_BUFFER_BYTES)

    async def _accept(self) -> None:
        await self.accept()

    async def _deny(self) -> None:
        await self.close()

    async def _send_text(self, text: str, frame: Any) -> None:
        await self.send(text_data=text)

    async def _send_live(self, event: LiveMessage) -> None:
        await self.send(text_data=event.encoded.text)

    async def _send_encoded(self, shared: Shared) -> None:
        wire = self.delivery.wire
        if wire is not None:
            offered = wire.offer(shared.frame)
            if offered is backpressure.TOO_FULL:
                self._too_slow("it stopped reading")
                return
            if offered is backpressure.WRITTEN:
                return
        await self.send(text_data=shared.text)

    async def _end(self, code: int) -> None:
        await self.close(code=code)


# --- Server-Sent Events ---------------------------------------------------------

# A comment line this often keeps proxies from closing a quiet stream: App
# Platform documents a 100 s request timeout (for uploads), and proxies
# commonly close a response silent for ~100 s (docs/protocol.md, 17).
SSE_HEARTBEAT_SECONDS = 15.0
# The browser's reconnect delay after a stream ends, in ms, drawn per stream
# so that a crowd does not come back in step.
SSE_RETRY_MS = (1000, 3000)
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # proxies that buffer: pass it through
]
_JSON = [(b"content-type", b"application/json")]


# The scope is a plain dict here as in RoomSession; the stubs' AsyncHttpConsumer
# types it as asgiref's TypedDict (see RoomSession.scope).
class RoomStreamConsumer(RoomSession, AsyncHttpConsumer):  # type: ignore[misc]  # see above
    """The room's frames as Server-Sent Events at ``/sse/rooms/<slug>/``.

    A read-only twin of ``RoomConsumer`` for networks that block WebSockets
    (docs/protocol.md, section 17): each frame is one ``data:`` line, a
    message's event id is its seq (the welcome's, the seq the client had
    read through), so the browser's ``Last-Event-ID`` resumes like
    ``?after=``. Writes go through the HTTP API. The stream is a hub
    listener like a socket, with the same gate: its server buffer is only
    read, never written to directly (``backpressure.locate_stream``).
    """

    heartbeat: "asyncio.Task[None] | None" = None
    # The welcome's event id.
    resume_id = 0
    started = False
    ended = False

    async def http_request(self, message: Any) -> None:
        """Open the stream, once; it lives on until the client goes."""
        if self.started or message.get("more_body"):
            return
        self.started = True
        # Admission control's place (core.admission), held until greeted.
        ticket = self.scope.get(admission.SCOPE_KEY)
        try:
            if self.scope["method"] != "GET":
                await self.send_response(405, b"", headers=[(b"allow", b"GET")])
                raise StopConsumer
            accepted = await self._open()
            if accepted is None:
                raise StopConsumer  # answered already: 403 or 429
            if not self.closing:
                after = accepted.after
                self.resume_id = after if after is not None else accepted.last_seq
                await self._greet(accepted)
        finally:
            if ticket is not None:
                ticket.release(completed=True)
        self.heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def http_disconnect(self, message: Any) -> None:
        """The client went, or the server ended the stream."""
        await self._stop()
        raise StopConsumer

    async def _stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            self.heartbeat = None
        await self._leave()

    async def _beat(self) -> None:
        """Comment lines while the client reads; a stream not read is
        closed, even in a quiet room."""
        while not self.closing:
            await asyncio.sleep(SSE_HEARTBEAT_SECONDS)
            outcome = self.delivery.may_send()
            if outcome is TOO_SLOW:
                self._too_slow("it stopped reading")
                return
            if outcome is not SEND_FRAME:
                return
            await self._write(b":\n\n")

    async def _write(self, data: bytes, more: bool = True) -> None:
        if self.ended:
            return
        self.ended = not more
        try:
            await self.send(
                {"type": "http.response.body", "body": data, "more_body": more}
            )
        except CLIENT_GONE:
            self.closing = True

    # --- RoomSession's steps, on a stream ----------------------------------------

    def _resume_after(self) -> int | None:
        last_id = auth.header(self.scope, b"last-event-id")
        if last_id is not None and last_id.strip():
            return protocol.parse_seq_text("Last-Event-ID", last_id.strip())
        return protocol.parse_resume_after(self.scope["query_string"])

    def _locate_wire(self) -> backpressure.WriteBuffer | None:
        return backpressure.locate_stream(self.base_send, settings.OUTPUT_BUFFER_BYTES)

    async def _accept(self) -> None:
        await self.send_headers(status=200, headers=_SSE_HEADERS)
        # The first bytes at once: proxies and the browser see the stream open.
        await self._write(b"retry: %d\n\n" % random.randint(*SSE_RETRY_MS))  # noqa: S311  # jitter

    async def _refuse(self, refusal: Refusal) -> None:
        retry_ms = math.ceil(refusal.retry_after * 1000)
        self.closing = True
        await self._leave()
        error = ProtocolError(refusal.code, refusal.detail, retry_after_ms=retry_ms)
        metrics.handshakes.labels("limited").inc()
        metrics.error_frames.labels(refusal.code).inc()
        retry_after = str(math.ceil(refusal.retry_after)).encode()
        await self.send_response(
            429,
            json.dumps(protocol.error_frame(error)).encode(),
            headers=[*_JSON, (b"retry-after", retry_after)],
        )

    async def _deny(self) -> None:
        await self.send_response(
            403, b'{"detail": "No such room, or no access."}', headers=_JSON
        )

    async def _send_text(self, text: str, frame: Any) -> None:
        kind = frame.get("type")
        if kind == "message":
            head = f"id: {frame['seq']}\n"
        elif kind == "welcome":
            head = f"id: {self.resume_id}\n"
        else:
            head = ""
        await self._write(f"{head}data: {text}\n\n".encode())

    async def _send_live(self, event: LiveMessage) -> None:
        await self._write(event.encoded.event)

    async def _send_encoded(self, shared: Shared) -> None:
        await self._write(shared.event)

    async def _end(self, code: int, retry_ms: int | None = None) -> None:
        """End the stream with an ``event: close`` naming the code."""
        self.closing = True
        retry = b"retry: %d\n" % retry_ms if retry_ms is not None else b""
        close = json.dumps({"type": "close", "code": code}).encode()
        await self._write(retry + b"event: close\ndata: " + close + b"\n\n", False)

    async def _close_too_slow(self) -> None:
        with contextlib.suppress(Exception):
            await self._end(CLOSE_TOO_SLOW)
        await asyncio.sleep(CLOSE_GRACE_SECONDS)
        if self.delivery.wire is not None:
            with contextlib.suppress(Exception):
                self.delivery.wire.drop()

    async def _close_for_shutdown(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SHUTDOWN_CLEANUP_SECONDS):
                if self.accepted and not self.ended:
                    # Come back at a random moment within the window.
                    window = max(shutdown_window_ms(), SSE_RETRY_MS[0])
                    await self._end(CLOSE_SHUTDOWN, random.randint(0, window))  # noqa: S311
                await self._stop()
