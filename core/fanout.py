"""Per-process fan-out: one channel-layer member per process, not per socket.

Every process joins a room's channel-layer group once, with one channel of
its own, and hands each event to its local connections itself, encoding a
message frame once for all of them. Publishing is unchanged (``group_send``
in ``core.services``), so the API, ``announce`` and any other Channels code
reach every instance as before.

This is what makes fan-out cheap: with one layer channel per connection,
Redis stores and the process decodes one copy of every message per
connection, and Channels dispatches each through a thread hop.

The hub also survives a Redis outage by itself: when the layer's receive
fails it retries with backoff, re-joins its groups once Redis answers (a
restarted Redis has forgotten them), and asks every local connection to
catch up from the database on what it may have missed meanwhile.
"""

import asyncio
import contextlib
import json
import logging
import weakref
from collections import defaultdict
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings

from core import backpressure

logger = logging.getLogger(__name__)

RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0


class Encoded:
    """A message frame encoded once for every local connection."""

    __slots__ = ("_frame", "text")

    def __init__(self, message: dict[str, Any]) -> None:
        self.text = json.dumps(message, ensure_ascii=False)
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        """The whole WebSocket text frame, built on first use."""
        if self._frame is None:
            self._frame = backpressure.text_frame(self.text.encode())
        return self._frame


class Listener(Protocol):
    """What a hub member (a ``RoomConsumer``) offers the hub."""

    async def hub_event(self, event: dict[str, Any], encoded: Encoded | None) -> None:
        """Handle one event; ``encoded`` is the message frame, encoded once."""

    def deliver_now(self, seq: int, encoded: Encoded) -> bool:
        """Deliver a live message without awaiting; False: use ``hub_event``."""

    def catch_up_after_outage(self) -> None:
        """Fetch from the database whatever the outage may have dropped."""


class Hub:
    """The groups this process listens to, and who listens locally."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.members: dict[str, set[Listener]] = defaultdict(set)
        self.receiver: asyncio.Task[None] | None = None
        self.refresher: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def subscribe(self, group: str, listener: Listener) -> None:
        """Deliver ``group``'s events to ``listener`` from now on."""
        async with self.lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel("hub.")
            if not self.members[group]:
                await self.layer.group_add(group, self.channel)
            self.members[group].add(listener)
        self._ensure_tasks()

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
            if not self.members:
                self._stop_tasks()
            with contextlib.suppress(Exception):
                await self.layer.group_discard(group, self.channel)

    def _ensure_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        if self.receiver is None or self.receiver.done():
            self.receiver = loop.create_task(self._receive_forever())
        if self.refresher is None or self.refresher.done():
            self.refresher = loop.create_task(self._refresh_forever())

    def _stop_tasks(self) -> None:
        for task in (self.receiver, self.refresher):
            if task is not None:
                task.cancel()
        self.receiver = self.refresher = None

    async def _receive_forever(self) -> None:
        delay = RETRY_MIN_SECONDS
        failed = False
        while True:
            try:
                if failed:
                    await self._rejoin()
                    # Joined again, so anything committed from here on is
                    # delivered live; fetch what the outage dropped now, not
                    # when the next event happens to come (a quiet room has
                    # none, and the first one may itself have been lost).
                    logger.info(
                        "channel layer is back; rejoined %d groups", len(self.members)
                    )
                    failed, delay = False, RETRY_MIN_SECONDS
                    self._catch_up_everyone()
                event = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failed:
                    logger.warning(
                        "channel layer receive failed (%s: %s); retrying",
                        exc.__class__.__name__,
                        exc,
                    )
                failed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            await self._dispatch(event)

    async def _rejoin(self) -> None:
        for group in list(self.members):
            await self.layer.group_add(group, self.channel)

    async def _refresh_forever(self) -> None:
        # channels_redis forgets group members after group_expiry; re-join
        # well before that for as long as anyone here listens.
        while True:
            await asyncio.sleep(settings.GROUP_REFRESH_SECONDS)
            with contextlib.suppress(Exception):
                await self._rejoin()

    def _catch_up_everyone(self) -> None:
        listeners = {member for group in self.members.values() for member in group}
        for listener in listeners:
            listener.catch_up_after_outage()

    async def _dispatch(self, event: dict[str, Any]) -> None:
        members = self.members.get(event.get("group", ""))
        if not members:
            return
        # Encoded once for every local connection; a sequential loop beats a
        # task or gather per recipient, and a plain call beats both where
        # nothing needs awaiting (see docs/performance.md).
        encoded = None
        seq = 0
        if event.get("type") == "room.message":
            encoded = Encoded(event["message"])
            seq = event["message"]["seq"]
        for listener in list(members):
            try:
                if encoded is None or not listener.deliver_now(seq, encoded):
                    await listener.hub_event(event, encoded)
            except Exception:
                logger.exception("delivering %s failed", event.get("type"))


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
