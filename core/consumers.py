"""``RoomConsumer``: one WebSocket connection to one room.

Thin by design: frames are parsed by ``core.protocol``, every read and write
goes through ``core.services``, presence through ``core.presence``, and live
events arrive from this process's ``core.fanout`` hub rather than from a
channel-layer channel of the connection's own.
"""

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from core import backpressure, protocol, services
from core.backpressure import TOO_FULL, WRITTEN
from core.fanout import Encoded, get_hub
from core.models import Room
from core.presence import get_presence
from core.protocol import ProtocolError
from core.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

CLOSE_TOO_BIG = 4009
CLOSE_SHUTDOWN = 4012
CLOSE_ACCESS_REVOKED = 4403
SHUTDOWN_CLEANUP_SECONDS = 2.0


def _exceeds_bytes(text: str, limit: int) -> bool:
    """True if ``text`` encodes to more than ``limit`` UTF-8 bytes."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


class RoomConsumer(AsyncWebsocketConsumer):
    """The room protocol of docs/protocol.md at ``/ws/rooms/<slug>/``."""

    # No channel-layer channel per connection: the process's hub listens for
    # everyone (core.fanout). An unknown alias makes Channels skip its own.
    channel_layer_alias = "per-process-hub-only"

    room: Room
    slug: str
    groups_joined: tuple[str, ...] = ()
    in_presence = False
    closing = False
    # Live copies at or below the last replayed seq are duplicates.
    replayed_through = 0
    # Highest seq sent; catching up after an outage starts above it.
    last_seq_sent = 0
    # Hub events that arrive while connect() runs wait here, so the welcome
    # comes first and a replay is never interleaved with live messages.
    held: list[tuple[dict[str, Any], Encoded | None]] | None = None
    write_buffer: backpressure.WriteBuffer | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # Daphne cancels every application on SIGTERM: say goodbye with
            # 4012 so clients resume elsewhere, and drop presence entries.
            await self._close_for_shutdown()
            raise
        except Exception:
            # Channels calls disconnect() only after a websocket.disconnect;
            # a consumer that fails (e.g. Redis down during connect) must not
            # stay subscribed to the hub or counted in presence.
            with contextlib.suppress(Exception):
                await self._leave()
            raise

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its thread hop per event.

        Channels runs ``close_old_connections`` on the database thread before
        every handler: a hop per frame received. Every database call here goes
        through ``database_sync_to_async``, which does the same before and
        after the call, so the extra hop only costs (see docs/performance.md).
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- lifecycle ------------------------------------------------------------

    async def connect(self) -> None:
        """Admit or refuse the handshake, then welcome, replay and presence."""
        self.slug = self.scope["url_route"]["kwargs"]["slug"]
        self.user = self.scope["user"]
        self.username = self.user.get_username() if self.user.is_authenticated else None
        self.credential = self.scope.get("credential")
        self.connection_id = uuid.uuid4().hex
        self.send_bucket = TokenBucket(
            settings.SEND_RATE_PER_SECOND, settings.SEND_BURST
        )
        self.history_bucket = TokenBucket(
            settings.HISTORY_RATE_PER_SECOND, settings.HISTORY_BURST
        )
        self.last_typing = -math.inf

        # Join before reading the room (and its last_seq) and the replay, so
        # nothing committed after the read can be missed; duplicates are
        # dropped by seq. One database call admits and positions the client.
        self.held = []
        await self._join()
        room = await database_sync_to_async(services.room_for_connection)(
            slug=self.slug, user=self.user
        )
        if room is None:
            await self._leave()
            await self.close()  # before accept: HTTP 403, unknown or private alike
            return
        self.room = room
        self.write_buffer = backpressure.locate(
            self.base_send, settings.SLOW_CLIENT_BUFFER_BYTES
        )
        try:
            after = protocol.parse_resume_after(self.scope["query_string"])
            after_error = None
        except ProtocolError as exc:
            after, after_error = None, exc

        await self.accept()
        await self.send_frame(
            protocol.welcome_frame(
                room=self.slug, user=self.username, last_seq=room.last_seq
            )
        )
        if after_error is not None:
            await self.send_frame(protocol.error_frame(after_error))
        if after is not None:
            await self._replay(after)
        await self._release_held()
        presence = get_presence()
        self.in_presence = True
        await presence.join(self.slug, self.username, self.connection_id)
        await self.send_frame(await presence.frame(self.slug))

    async def _join(self) -> None:
        groups = [services.room_group(self.slug)]
        if self.user.is_authenticated:
            groups.append(services.user_group(self.user.pk))
        hub = get_hub()
        for group in groups:
            await hub.subscribe(group, self)
            self.groups_joined += (group,)

    async def _replay(self, after: int) -> None:
        """Send what the client missed, then ``replayed``."""
        messages, complete = await database_sync_to_async(services.replay)(
            room_id=self.room.pk, after=after
        )
        for message in messages:
            await self.send_frame(message)
        self.replayed_through = messages[-1]["seq"] if messages else after
        self.last_seq_sent = self.replayed_through
        await self.send_frame(
            protocol.replayed_frame(after=after, count=len(messages), complete=complete)
        )

    async def _release_held(self) -> None:
        held, self.held = self.held or [], None
        for event, encoded in held:
            await self.hub_event(event, encoded)

    async def disconnect(self, code: int) -> None:
        """Leave the hub's groups and presence."""
        await self._leave()

    async def _leave(self) -> None:
        groups, self.groups_joined = self.groups_joined, ()
        hub = get_hub()
        for group in groups:
            await hub.unsubscribe(group, self)
        # Only a connection that was counted in may count out: a user's
        # entry must not go while their other connections are open.
        if self.in_presence:
            self.in_presence = False
            await get_presence().leave(self.slug, self.username, self.connection_id)

    async def _close_for_shutdown(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SHUTDOWN_CLEANUP_SECONDS):
                if self.groups_joined and not self.closing:
                    self.closing = True
                    await self.base_send(
                        {"type": "websocket.close", "code": CLOSE_SHUTDOWN}
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
            await self.handle(frame)
        except ProtocolError as exc:
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
        elif isinstance(frame, protocol.HistoryFrame):
            await self.handle_history(frame)
        elif isinstance(frame, protocol.TypingFrame):
            await self.handle_typing()
        else:
            await self.send_frame(protocol.pong_frame())

    async def handle_send(self, frame: protocol.SendFrame) -> None:
        client_id = frame.client_id
        if not self.user.is_authenticated:
            raise ProtocolError(
                protocol.UNAUTHENTICATED,
                "Sign in to send messages.",
                client_id=client_id,
            )
        self.check_rate(self.send_bucket, client_id)
        try:
            result = await services.post_message(
                room=self.room,
                author=self.user,
                body=frame.body,
                client_id=client_id,
            )
        except services.AccessDenied:
            raise ProtocolError(
                protocol.FORBIDDEN, "You no longer have access to this room.",
                client_id=client_id,
            ) from None  # fmt: skip
        await self.send_frame(
            protocol.ack_frame(client_id=client_id, seq=result.message["seq"])
        )

    async def handle_history(self, frame: protocol.HistoryFrame) -> None:
        self.check_rate(self.history_bucket, None)
        try:
            messages, has_more = await database_sync_to_async(
                services.readable_history
            )(
                user=self.user, room_id=self.room.pk,
                before=frame.before, after=frame.after, limit=frame.limit,
            )  # fmt: skip
        except services.AccessDenied:
            raise ProtocolError(
                protocol.FORBIDDEN, "You no longer have access to this room."
            ) from None
        await self.send_frame(
            protocol.history_frame(messages=messages, has_more=has_more)
        )

    async def handle_typing(self) -> None:
        if not self.user.is_authenticated:
            raise ProtocolError(
                protocol.UNAUTHENTICATED, "Sign in to send typing notices."
            )
        now = time.monotonic()
        if now - self.last_typing < settings.TYPING_INTERVAL_SECONDS:
            return  # relayed at most once per interval; the excess is dropped
        self.last_typing = now
        await services.broadcast_typing(
            room=self.slug, user=self.username, sender=self.connection_id
        )

    def check_rate(self, bucket: TokenBucket, client_id: str | None) -> None:
        wait = bucket.take()
        if wait:
            raise ProtocolError(
                protocol.RATE_LIMITED,
                "Too many requests; slow down.",
                client_id=client_id,
                retry_after_ms=math.ceil(wait * 1000),
            )

    # --- hub events ---------------------------------------------------------------

    async def hub_event(self, event: dict[str, Any], encoded: Encoded | None) -> None:
        """One event of a joined group, from this process's hub."""
        if self.closing:
            return
        if self.held is not None:
            self.held.append((event, encoded))
            return
        kind = event["type"]
        if kind == "room.message":
            seq = event["message"]["seq"]
            if seq > self.replayed_through:
                await self._deliver(seq, encoded or Encoded(event["message"]))
        elif kind == "room.typing":
            if event["sender"] != self.connection_id:
                await self.send_frame(protocol.typing_frame(user=event["user"]))
        elif kind == "room.presence":
            await self.send_frame(event["frame"])
        elif kind == "access.revoked":
            await self.access_revoked(event)

    async def send(
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """A frame for the client, where a client that has gone is no error.

        uvicorn raises ClientDisconnected (an OSError) for a send after the
        client left, where Daphne drops the message. The disconnect event
        that follows cleans up; until then nothing more is sent.
        """
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except OSError:
            self.closing = True

    def deliver_now(self, seq: int, encoded: Encoded) -> bool:
        """The hub's fast path for a live message, with nothing to await.

        Writes the shared frame straight to the socket. False when only the
        awaited path (``hub_event``) can deliver it: the connection is still
        starting or already closing, or its server takes frames through
        ASGI only (see core.backpressure).
        """
        wire = self.write_buffer
        if self.held is not None or self.closing or wire is None:
            return False
        if seq <= self.replayed_through:
            return True  # the replay sent it already
        outcome = wire.offer(encoded.frame)
        if outcome is WRITTEN:
            if seq > self.last_seq_sent:
                self.last_seq_sent = seq
            return True
        if outcome is TOO_FULL:
            self._drop_slow_client()
            return True
        return False

    async def _deliver(self, seq: int, encoded: Encoded) -> None:
        """Send a live message: the shared frame straight to the socket when
        the server allows it (see core.backpressure), else through ASGI."""
        if not self.deliver_now(seq, encoded):
            self.last_seq_sent = max(seq, self.last_seq_sent)
            await self.send(text_data=encoded.text)

    def _drop_slow_client(self) -> None:
        """Drop a client that has stopped reading, before it costs the room.

        The abort reaches the client as 1006; it reconnects and resumes with
        ?after=, so nothing is lost.
        """
        logger.warning("dropping a client of room %s: it stopped reading", self.slug)
        self.closing = True
        self.write_buffer.drop()

    async def access_revoked(self, event: dict[str, Any]) -> None:
        """Close with 4403 if the revocation covers this connection."""
        if event["room"] not in (None, self.slug):
            return
        if event["credential"] not in (None, self.credential):
            return
        self.closing = True
        await self.close(code=CLOSE_ACCESS_REVOKED)

    def catch_up_after_outage(self) -> None:
        """Send what a channel-layer outage may have kept from this client."""
        if not self.closing and self.held is None:
            asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        with contextlib.suppress(Exception):
            messages, _ = await database_sync_to_async(services.replay)(
                room_id=self.room.pk, after=self.last_seq_sent
            )
            for message in messages:
                await self.hub_event({"type": "room.message", "message": message}, None)

    # --- output -------------------------------------------------------------------

    async def send_frame(self, frame: Any) -> None:
        if not self.closing:
            await self.send(text_data=json.dumps(frame, ensure_ascii=False))

    async def send_error(self, error: ProtocolError) -> None:
        await self.send_frame(protocol.error_frame(error))
