"""Re-checks the access of open connections, so lost access stays lost.

A revocation reaches connections as a channel-layer event, which is at most
once: a Redis blip, or a process killed between commit and publish, loses
it. So a connection's access is also read again from the database whenever
it could have missed one: before a catch-up after a channel-layer outage,
and every ``ACCESS_RECHECK_SECONDS`` for every connection. A check is one
batch of queries for all the connections that asked within a few
milliseconds, not a query per connection.

A connection keeps its access while, read now: the room exists, the room is
public or the user is a member of it, the user is active, and the
credential it signed in with is still valid (the token exists and is the
user's; the session exists, has not expired, names the user and carries the
user's current session hash, as Django's own check requires).
"""

import asyncio
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.models import Session
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from rest_framework.authtoken.models import Token

from core import db
from core.models import Membership, Room

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

logger = logging.getLogger(__name__)

# Connections that ask within this window share one batch of queries.
BATCH_WINDOW_SECONDS = 0.01
# Rows per IN (...) list.
CHUNK = 500

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a connection was admitted with."""

    room_id: int
    user_id: int | None  # None: anonymous
    token_key: str | None = None
    session_key: str | None = None


class Guarded(Protocol):
    """What the warden needs of a connection."""

    grant: Grant

    def access_lost(self) -> None:
        """Close the connection: its access is gone (4403)."""

    def access_held(self) -> None:
        """Its access was read again and holds."""


def _chunks(values: Iterable[_T], size: int = CHUNK) -> Iterable[list[_T]]:
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start : start + size]


def lost(grants: Iterable[Grant]) -> set[Grant]:
    """The grants among ``grants`` that no longer hold (database reads)."""
    grants = set(grants)
    if not grants:
        return set()
    rooms: dict[int, bool] = {}
    for chunk in _chunks({g.room_id for g in grants}):
        rooms.update(Room.objects.filter(pk__in=chunk).values_list("pk", "is_private"))
    user_ids = {g.user_id for g in grants if g.user_id is not None}
    users: dict[int, tuple[bool, AbstractBaseUser]] = {}
    for chunk in _chunks(user_ids):
        for user in get_user_model().objects.filter(pk__in=chunk):
            users[user.pk] = (user.is_active, user)
    private = {room for room, is_private in rooms.items() if is_private}
    members: set[tuple[int, int]] = set()
    if private and user_ids:
        for chunk in _chunks(user_ids):
            members.update(
                Membership.objects.filter(
                    room_id__in=private, user_id__in=chunk
                ).values_list("room_id", "user_id")
            )
    tokens: dict[str, int] = {}
    for keys in _chunks({g.token_key for g in grants if g.token_key}):
        tokens.update(Token.objects.filter(key__in=keys).values_list("key", "user_id"))
    sessions = _valid_sessions({g.session_key for g in grants if g.session_key}, users)

    def holds(grant: Grant) -> bool:
        if grant.room_id not in rooms:
            return False
        if grant.user_id is None:
            return not rooms[grant.room_id]
        active, _ = users.get(grant.user_id, (False, None))
        if not active:
            return False
        if rooms[grant.room_id] and (grant.room_id, grant.user_id) not in members:
            return False
        if grant.token_key is not None:
            return tokens.get(grant.token_key) == grant.user_id
        if grant.session_key is not None:
            return sessions.get(grant.session_key) == grant.user_id
        return True

    return {grant for grant in grants if not holds(grant)}


def _valid_sessions(
    keys: set[str], users: "dict[int, tuple[bool, AbstractBaseUser]]"
) -> dict[str, int]:
    """session key -> the user it still signs in, for the valid ones."""
    valid: dict[str, int] = {}
    now = timezone.now()
    for chunk in _chunks(keys):
        for session in Session.objects.filter(
            session_key__in=chunk, expire_date__gt=now
        ):
            data = session.get_decoded()
            try:
                # A session without a user: int(None) raises TypeError.
                user_id = int(data.get(SESSION_KEY))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            user = users.get(user_id, (False, None))[1]
            if user is None:
                continue
            session_hash = data.get(HASH_SESSION_KEY) or ""
            if constant_time_compare(session_hash, user.get_session_auth_hash()) or any(
                constant_time_compare(session_hash, fallback)
                for fallback in user.get_session_auth_fallback_hash()
            ):
                valid[session.session_key] = user_id
    return valid


class Warden:
    """This process's open connections, and checks of their access."""

    def __init__(self) -> None:
        self.connections: set[Guarded] = set()
        self.waiting: dict[Grant, list[asyncio.Future[bool]]] = {}
        self.batch: asyncio.Task[None] | None = None
        self.periodic: asyncio.Task[None] | None = None

    def watch(self, connection: Guarded) -> None:
        """Re-check ``connection`` periodically from now on."""
        self.connections.add(connection)
        if self.periodic is None or self.periodic.done():
            self.periodic = asyncio.get_running_loop().create_task(
                self._recheck_forever()
            )

    def forget(self, connection: Guarded) -> None:
        self.connections.discard(connection)

    async def holds(self, grant: Grant) -> bool:
        """True if ``grant`` still holds, read now (batched with others)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(grant, []).append(future)
        if self.batch is None or self.batch.done():
            self.batch = asyncio.get_running_loop().create_task(self._run_batch())
        return await future

    async def _run_batch(self) -> None:
        await asyncio.sleep(BATCH_WINDOW_SECONDS)
        waiting, self.waiting = self.waiting, {}
        try:
            gone = await db.run(lost)(waiting.keys())
        except Exception as exc:
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for grant, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(grant not in gone)

    async def _recheck_forever(self) -> None:
        interval = settings.ACCESS_RECHECK_SECONDS
        # Instances started together do not query together.
        await asyncio.sleep(random.uniform(0, interval))  # noqa: S311
        while self.connections:
            try:
                await self.recheck_all()
            except Exception as exc:  # the database is down: try next time
                logger.warning(
                    "access re-check failed (%s); retrying in %g s",
                    exc.__class__.__name__,
                    interval,
                )
            await asyncio.sleep(interval)

    async def recheck_all(self) -> int:
        """Close every watched connection whose access is gone; how many."""
        connections = list(self.connections)
        gone = await db.run(lost)(c.grant for c in connections)
        closed = 0
        for connection in connections:
            if connection not in self.connections:
                continue
            if connection.grant in gone:
                closed += 1
                connection.access_lost()
            else:
                connection.access_held()
        if closed:
            logger.info("access re-check closed %d connections", closed)
        return closed


_wardens: dict[asyncio.AbstractEventLoop, Warden] = {}


def get_warden() -> Warden:
    """The ``Warden`` of the running event loop."""
    loop = asyncio.get_running_loop()
    warden = _wardens.get(loop)
    if warden is None:
        for old in [old for old in _wardens if old.is_closed()]:
            del _wardens[old]
        warden = _wardens[loop] = Warden()
    return warden
