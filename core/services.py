"""The one place that writes rooms and messages and publishes events.

Consumers, the HTTP API, pages and the ``announce`` command all call these
functions. A message is published only after its transaction has committed,
and publishing never runs on the database thread: async callers store through
``core.db`` and then await the publish on the event loop.
"""

import asyncio
import hashlib
import logging
import re
import time
import unicodedata
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.postgres.search import (
    SearchHeadline,
    SearchQuery,
    SearchRank,
    SearchVector,
)
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.models import Session
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, F, Func, QuerySet, TextField, Value, When
from django.db.models.functions import Collate, Length
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone
from django.utils.text import slugify
from rest_framework.authtoken.models import Token

from core import access, db, metrics, protocol, reads
from core.models import SLUG_PATTERN, Membership, Message, ReadPosition, Room

if TYPE_CHECKING:
    from django.contrib.auth.models import User as AuthUser

logger = logging.getLogger(__name__)

User: TypeAlias = access.User

# Rooms per query when reading many rooms' last_seq.
LAST_SEQS_CHUNK = 1000


class AccessDenied(Exception):
    """The caller may not do this in this room (or the room is unknown)."""


class NotSignedIn(AccessDenied):
    """Posting needs a signed-in user."""


class SlugTaken(Exception):
    """A room with this slug exists already."""


class InvalidRoomName(Exception):
    """No slug can be derived from the name; the caller must give one."""


class UnknownUser(Exception):
    """No active user has that username."""


class RoomFull(Exception):
    """The private room has ``ROOM_MEMBERS_MAX`` members already."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This room is full: a private room holds at most {limit:,} members."
        )


class MessageNotFound(Exception):
    """No message of the room has that seq (or it is a change, or deleted)."""


@dataclass(frozen=True)
class PostResult:
    """A stored message, and whether this call stored it (False: a repeat)."""

    message: protocol.MessageFrame
    created: bool


@dataclass
class PublishStats:
    """Counters for /readyz and the logs; per process."""

    published: int = 0
    failed: int = 0


publish_stats = PublishStats()


def room_group(room_id: int) -> str:
    """Channel-layer group of a room's connections.

    Keyed by id: a room deleted and created again under the same slug is
    another room, and the old one's connections must not hear it.
    """
    return f"room.{room_id}"


def room_id_of(group: str) -> int | None:
    """The room id of a ``room_group`` name; None for any other group."""
    prefix, _, room_id = group.partition(".")
    if prefix != "room" or not room_id.isdigit():
        return None
    return int(room_id)


def last_seqs(room_ids: list[int]) -> dict[int, int]:
    """Each existing room's ``last_seq``, by id (rooms gone are left out)."""
    found: dict[int, int] = {}
    for start in range(0, len(room_ids), LAST_SEQS_CHUNK):
        chunk = room_ids[start : start + LAST_SEQS_CHUNK]
        found.update(Room.objects.filter(pk__in=chunk).values_list("pk", "last_seq"))
    return found


def user_group(user_id: int) -> str:
    """Channel-layer group of one user's connections (access changes)."""
    return f"user.{user_id}"


def credential_id(secret: str) -> str:
    """A short, non-reversible id for a session key or token."""
    return hashlib.sha256(secret.encode()).hexdigest()[:24]


# --- messages ---------------------------------------------------------------


def frame_for(message: Message, room_slug: str) -> protocol.MessageFrame:
    return protocol.message_frame(
        room=room_slug,
        seq=message.seq,
        author=message.author_name or None,
        body=message.body,
        sent_at=message.sent_at,
        client_id=message.client_id,
        kind=message.kind,
        target=message.target_seq,
        edited_at=message.edited_at,
        deleted=message.deleted,
    )


def store_message(
    *,
    room: Room,
    author: User | None,
    body: str,
    client_id: str | None,
) -> PostResult:
    """Store a message with the room's next ``seq``; ``author=None``: system.

    ``room`` is the caller's copy, read when its connection or request began.
    ``seq`` comes from ``Room.last_seq`` in the transaction that stores the
    message, under the room row's lock, so it is gap-free and unique. A
    repeated ``(room, author, client_id)`` returns the original message with
    ``created=False``. Raises ``NotSignedIn``, ``AccessDenied`` or
    ``Room.DoesNotExist``. Does not publish.
    """
    body = protocol.validate_body(body)
    client_id = protocol.validate_client_id(client_id)
    if connection.vendor == "postgresql":
        return _store_in_one_statement(room, author, body, client_id)
    # SQLite: transactions BEGIN IMMEDIATE, holding the database's write
    # lock throughout, so a membership removal or a deactivation cannot
    # commit between the checks and the insert.
    with transaction.atomic():
        room = Room.objects.select_for_update().get(pk=room.pk)
        _check_can_post(author, room)
        if client_id is not None and author is not None:
            original = _original(room, author, client_id)
            if original is not None:
                return PostResult(frame_for(original, room.slug), created=False)
        now = timezone.now()
        seq = room.last_seq + 1
        Room.objects.filter(pk=room.pk).update(last_seq=seq, last_message_at=now)
        message = Message.objects.create(  # type: ignore[misc]  # anonymous refused above
            room=room,
            seq=seq,
            author=author,
            author_name=author.get_username() if author is not None else "",
            body=body,
            client_id=client_id,
            sent_at=now,
        )
    return PostResult(frame_for(message, room.slug), created=True)


def _check_signed_in(author: User | None) -> None:
    """The checks that need no query (``access.is_signed_in``,
    ``access.can_write``): signed in, and active in this copy."""
    if author is None:
        return  # a system message (announce)
    if not access.is_signed_in(author):
        raise NotSignedIn
    if not access.can_write(author):
        raise AccessDenied


def _check_can_post(author: User | None, room: Room) -> None:
    """``access.can_post_now``: ``access.POST_RIGHT_SQL``, the condition the
    PostgreSQL statement holds, read in one query.

    The caller's copy of the author may predate a deactivation or a removal.
    """
    _check_signed_in(author)
    if author is None:
        return
    if not access.can_post_now(author, room):
        raise AccessDenied


def _original(room: Room, author: User, client_id: str) -> Message | None:
    # No ordering: Message's default one joins Room and sorts, which costs
    # more than the unique-index lookup itself.
    return (
        Message.objects.filter(room=room, author=author, client_id=client_id)  # type: ignore[misc]  # callers refused anonymous authors
        .order_by()
        .first()
    )


# Table and column names as core/models.py and django.contrib.auth define
# them (a unit test keeps them in step). The WHERE holds the room's privacy
# as the caller saw it and every condition of ``access.can_post`` that can
# change, as ``access.POST_RIGHT_SQL`` states them (the SQLite path runs the
# same SQL). They are read in the statement that locks the room row and
# takes the seq, so a removal committed before the statement starts refuses
# the post even after the caller's own check passed. ``system`` and
# ``is_private`` are literals once bound (client-side binding), so the
# planner drops the checks a message does not need: a public room's post
# adds one primary-key probe of the author. (S608: constants only.)
INSERT_WITH_NEXT_SEQ = f"""
WITH next AS (
    UPDATE core_room SET last_seq = last_seq + 1, last_message_at = %(now)s
    WHERE id = %(room)s AND is_private = %(is_private)s
        AND {access.POST_RIGHT_SQL}
    RETURNING last_seq
)
INSERT INTO core_message
    (room_id, seq, author_id, author_name, body, client_id, sent_at)
SELECT %(room)s, last_seq, %(author)s, %(author_name)s, %(body)s, %(client_id)s,
    %(now)s
FROM next
RETURNING id, seq
"""  # noqa: S608


def _store_in_one_statement(
    room: Room, author: User | None, body: str, client_id: str | None
) -> PostResult:
    """PostgreSQL: the same rules in one round trip instead of five.

    The UPDATE locks the room row and takes the next seq only if the author
    may still post (``INSERT_WITH_NEXT_SEQ``); the INSERT stores the message;
    being one statement, they commit together or not at all
    (docs/protocol.md). A repeated client_id hits the unique constraint,
    which undoes the seq too, and the original is returned.

    Membership is left to the statement, so a post costs no query before
    it. If nothing matched, the room is read and checked again to say why
    (``Room.DoesNotExist``, ``AccessDenied``); if it only changed privacy
    and the author may post there now, the statement runs once more.
    """
    _check_signed_in(author)
    stored = _insert_with_next_seq(room, author, body, client_id)
    if stored is not None:
        return stored
    room = Room.objects.get(pk=room.pk)  # Room.DoesNotExist: it went
    _check_can_post(author, room)
    stored = _insert_with_next_seq(room, author, body, client_id)
    if stored is None:
        raise AccessDenied  # access changed again under us
    return stored


def _insert_with_next_seq(
    room: Room, author: User | None, body: str, client_id: str | None
) -> PostResult | None:
    """Run ``INSERT_WITH_NEXT_SEQ``; None if the room or access changed."""
    now = timezone.now()
    author_name = author.get_username() if author is not None else ""
    params = {
        **access.post_right_params(author, room),
        "author_name": author_name,
        "body": body,
        "client_id": client_id,
        "now": now,
    }
    # Inside a caller's transaction, a savepoint keeps a repeat from
    # breaking it; in autocommit the statement is its own transaction.
    scope = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with scope, connection.cursor() as cursor:
            cursor.execute(INSERT_WITH_NEXT_SEQ, params)
            row = cursor.fetchone()
    except IntegrityError:
        original = (
            _original(room, author, client_id)
            if author is not None and client_id is not None
            else None
        )
        if original is None:
            raise
        return PostResult(frame_for(original, room.slug), created=False)
    if row is None:
        return None
    message = Message(  # type: ignore[misc]  # anonymous authors refused before
        id=row[0],
        room=room,
        seq=row[1],
        author=author,
        author_name=author_name,
        body=body,
        client_id=client_id,
        sent_at=now,
    )
    return PostResult(frame_for(message, room.slug), created=True)


async def post_message(
    *,
    room: Room,
    author: User | None,
    body: str,
    client_id: str | None = None,
) -> PostResult:
    """Store a message, then publish it to every instance (async callers).

    The publish happens after the commit and on the event loop; a failed
    publish is logged and counted, never raised: the message is stored.
    """
    result = await db.run(store_message)(
        room=room, author=author, body=body, client_id=client_id
    )
    if result.created:
        metrics.messages_stored.inc()
        await publish_message(room.pk, result.message)
    return result


def post_message_sync(
    *,
    room: Room,
    author: User | None,
    body: str,
    client_id: str | None = None,
) -> PostResult:
    """The synchronous twin of ``post_message`` (API views, commands)."""
    result = store_message(room=room, author=author, body=body, client_id=client_id)
    if result.created:
        metrics.messages_stored.inc()
        # At once when no outer transaction is open; otherwise after it commits.
        message, room_id = result.message, room.pk
        transaction.on_commit(lambda: async_to_sync(publish_message)(room_id, message))
    return result


def store_change(
    *,
    room: Room,
    actor: User,
    seq: int,
    body: str | None,
    client_id: str | None,
) -> PostResult:
    """Edit message ``seq`` to ``body``, or delete it (``body=None``).

    The change is an event of its own (docs/protocol.md, 9.7): a row that
    names its target and takes the room's next seq, under the room row's
    lock that every post takes, so posts and changes share one order and a
    client that applies them in order ends with what the database holds.
    The target row takes its new state in the same transaction, and so do
    its earlier edits: a new text replaces the old one in them, a deletion
    erases it, so no replaced or deleted text stays in the database. A
    repeated ``(room, actor, client_id)`` returns the original event with
    ``created=False``. Raises
    ``NotSignedIn``, ``AccessDenied``, ``MessageNotFound`` or
    ``Room.DoesNotExist``. Does not publish.
    """
    if body is not None:
        body = protocol.validate_body(body)
    client_id = protocol.validate_client_id(client_id)
    if actor is None:
        raise AccessDenied
    _check_signed_in(actor)
    with transaction.atomic():
        room = Room.objects.select_for_update().get(pk=room.pk)
        # Read again: the caller's copy may predate a deactivation or the
        # loss of staff status.
        current = get_user_model().objects.filter(pk=actor.pk).first()  # type: ignore[misc]  # signed in (checked above): pk is set
        if current is None or not access.can_post(current, room):
            raise AccessDenied
        if client_id is not None:
            original = _original(room, current, client_id)
            if original is not None:
                return PostResult(frame_for(original, room.slug), created=False)
        target = (
            Message.objects.select_for_update()
            .filter(room=room, seq=seq, kind=Message.Kind.MESSAGE, deleted=False)
            .order_by()
            .first()
        )
        if target is None:
            raise MessageNotFound(seq)
        now = timezone.now()
        earlier_edits = Message.objects.filter(
            room=room, target_seq=seq, kind=Message.Kind.EDIT
        )
        if body is not None:
            if not access.can_edit(current, target):
                raise AccessDenied
            kind = Message.Kind.EDIT
            target.body, target.edited_at = body, now
            target.save(update_fields=["body", "edited_at"])
            # Earlier edits take the new text too: an edit replaces the old
            # text everywhere, and applying them in order still ends here.
            earlier_edits.update(body=body)
        else:
            if not access.can_delete(current, room, target):
                raise AccessDenied
            kind = Message.Kind.DELETE
            target.body, target.deleted, target.edited_at = "", True, None
            target.save(update_fields=["body", "deleted", "edited_at"])
            earlier_edits.update(body="", deleted=True)
        event_seq = room.last_seq + 1
        Room.objects.filter(pk=room.pk).update(last_seq=event_seq)
        event = Message.objects.create(
            room=room,
            seq=event_seq,
            author=current,
            author_name=current.get_username(),
            body=body or "",
            client_id=client_id,
            sent_at=now,
            kind=kind,
            target_seq=seq,
        )
    return PostResult(frame_for(event, room.slug), created=True)


async def change_message(
    *,
    room: Room,
    actor: User,
    seq: int,
    body: str | None,
    client_id: str | None = None,
) -> PostResult:
    """``store_change``, then publish the change to every instance."""
    result = await db.run(store_change)(
        room=room, actor=actor, seq=seq, body=body, client_id=client_id
    )
    if result.created:
        await publish_message(room.pk, result.message)
    return result


def change_message_sync(
    *,
    room: Room,
    actor: User,
    seq: int,
    body: str | None,
    client_id: str | None = None,
) -> PostResult:
    """The synchronous twin of ``change_message`` (API views)."""
    result = store_change(
        room=room, actor=actor, seq=seq, body=body, client_id=client_id
    )
    if result.created:
        message, room_id = result.message, room.pk
        transaction.on_commit(lambda: async_to_sync(publish_message)(room_id, message))
    return result


def deletions(
    *, room: Room, actor: User, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """A room's deletions, newest first: who deleted which seq, and when.

    For the room's owner and staff only (``AccessDenied``); never a body.
    """
    if not access.can_audit(actor, room):
        raise AccessDenied
    rows = Message.objects.filter(room=room, kind=Message.Kind.DELETE)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    page = list(
        rows.order_by("-seq").values_list(
            "seq", "target_seq", "author_name", "sent_at"
        )[: limit + 1]
    )
    return [
        {
            "seq": seq,
            "target": target,
            "deleted_by": author_name or None,
            "deleted_at": protocol.format_timestamp(sent_at),
        }
        for seq, target, author_name, sent_at in page[:limit]
    ], len(page) > limit


async def publish(group: str, event: dict[str, Any]) -> bool:
    """``group_send`` capped at the publish timeout; False if it failed.

    The event carries its group, so a process that listens to many groups
    on one channel (``core.fanout``) knows whom it is for.
    """
    # CHANNEL_LAYERS is always set (backend/settings.py): never None.
    layer: BaseChannelLayer = get_channel_layer()  # type: ignore[assignment]  # see above
    started = time.perf_counter()
    try:
        await asyncio.wait_for(
            layer.group_send(group, {**event, "group": group}),
            settings.PUBLISH_TIMEOUT_SECONDS,
        )
    except Exception as exc:  # a Redis outage must not fail the caller
        publish_stats.failed += 1
        metrics.publishes.labels("failed").inc()
        logger.warning(
            "publish to %s failed (%s: %s); clients resume from the database",
            group,
            exc.__class__.__name__,
            exc,
        )
        return False
    publish_stats.published += 1
    metrics.publishes.labels("ok").inc()
    metrics.observe_call(metrics.publish_seconds, started)
    return True


async def publish_message(room_id: int, message: protocol.MessageFrame) -> bool:
    """Send a stored message to its room's connections on every instance."""
    return await publish(
        room_group(room_id), {"type": "room.message", "message": message}
    )


def _page(queryset: Any, limit: int, *, descending: bool) -> tuple[list[Any], bool]:
    rows = list(queryset.order_by("-seq" if descending else "seq")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    if descending:
        rows.reverse()
    return rows, has_more


def history(
    *, room: Room, before: int | None, after: int | None, limit: int
) -> tuple[list[protocol.MessageFrame], bool]:
    """A page of messages, ascending by seq, and whether more exist.

    No bounds: the latest ``limit``. ``after`` only: the first ``limit`` above
    it. ``before`` only: the last ``limit`` below it. Both: the first
    ``limit`` strictly between. ``has_more`` looks in the page's direction.
    """
    messages = Message.objects.filter(room=room)
    if after is not None:
        messages = messages.filter(seq__gt=after)
    if before is not None:
        messages = messages.filter(seq__lt=before)
    descending = after is None
    rows, has_more = _page(messages, limit, descending=descending)
    return [frame_for(row, room.slug) for row in rows], has_more


def readable_history(
    *,
    user: User,
    room_id: int,
    before: int | None,
    after: int | None,
    limit: int,
    max_bytes: int | None = None,
) -> tuple[list[protocol.MessageFrame], bool]:
    """``history`` after checking that ``user`` may still read the room.

    ``max_bytes`` trims the page (``protocol.fit_page``) so one answer
    cannot outgrow a connection's output budget.
    """
    room = Room.objects.get(pk=room_id)
    if not access.can_read(user, room):
        raise AccessDenied
    messages, has_more = history(room=room, before=before, after=after, limit=limit)
    if max_bytes is not None:
        messages, has_more = protocol.fit_page(
            messages, has_more, max_bytes=max_bytes, keep_newest=after is None
        )
    return messages, has_more


def replay(
    *, room_id: int, after: int, limit: int
) -> tuple[list[protocol.MessageFrame], bool]:
    """Up to ``limit`` messages above ``after``, and whether more exist."""
    room = Room.objects.get(pk=room_id)
    return history(room=room, before=None, after=after, limit=limit)


@dataclass(frozen=True)
class OpenedRoom:
    """A room a connection may read, as read for its handshake."""

    room: Room
    page: list[protocol.MessageFrame]  # the first replay page (``after``)
    more: bool


def open_room(
    *, slug: str, user: User, after: int | None, limit: int
) -> OpenedRoom | None:
    """The room ``slug`` if ``user`` may read it, with its ``last_seq`` and,
    with ``after``, the first replay page; None: unknown or not allowed.

    One database call for a handshake; the caller has joined the room's
    group before it, so nothing committed after this read can be missed.
    """
    room = access.handshake_room(user, slug)
    if room is None:
        return None
    if after is None or after >= room.last_seq:
        return OpenedRoom(room, [], False)  # nothing to replay: no query
    page, more = replay_page(room, after, limit)
    return OpenedRoom(room, page, more)


REPLAY_PAGE_SQL = """
SELECT seq, author_name, body, sent_at, client_id, kind, target_seq, edited_at,
    deleted
FROM core_message WHERE room_id = %s AND seq > %s ORDER BY seq LIMIT %s
"""


def _utc(moment: Any) -> Any:
    # SQLite hands back naive UTC datetimes.
    if moment is None or moment.tzinfo:
        return moment
    return moment.replace(tzinfo=UTC)


def replay_page(
    room: Room, after: int, limit: int
) -> tuple[list[protocol.MessageFrame], bool]:
    """``history(room=room, before=None, after=after, limit=limit)`` in one
    plain statement: a handshake's replay skips the ORM's query building."""
    with connection.cursor() as cursor:
        cursor.execute(REPLAY_PAGE_SQL, [room.pk, after, limit + 1])
        rows = cursor.fetchall()
    frames = [
        protocol.message_frame(
            room=room.slug,
            seq=seq,
            author=author_name or None,
            body=body,
            sent_at=_utc(sent_at),
            client_id=client_id,
            kind=kind,
            target=target,
            edited_at=_utc(edited_at),
            deleted=bool(deleted),
        )
        for (
            seq, author_name, body, sent_at, client_id, kind, target, edited_at,
            deleted,
        ) in rows[:limit]
    ]  # fmt: skip
    return frames, len(rows) > limit


# --- search ----------------------------------------------------------------------

# PostgreSQL's text-search configuration for message bodies. 'simple' only
# lowercases: chat is multilingual, and a language's stemmer and stop words
# ('english') would mangle every other language, names and code, and drop
# words people do search for. Each query word matches the start of a word
# ("deploy" finds "deployed"), which recovers most of what stemming gives,
# in every language. The GIN index of migration 0004 is over exactly
# ``search_vector()``: change one, change the other
# (tests/unit/test_search.py compares them).
SEARCH_CONFIG = "simple"
SEARCH_MAX_CHARS = 200
SEARCH_MAX_WORDS = 8
SEARCH_PAGE_DEFAULT = 20
SEARCH_PAGE_MAX = 50
# The deepest page: each page ranks every match again.
SEARCH_MAX_PAGE = 20
# A word of a query or a body, as both backends cut it (PostgreSQL's parser
# also splits at "_").
SEARCH_WORD = re.compile(r"[^\W_]+")
# A body up to this long is its own snippet; a longer one is cut around its
# matches (SQLite: around the first, to about this long).
SNIPPET_CHARS = 160
# Rare control characters around a headline's matches, split out in Python:
# the server never sends HTML. Bodies may hold them, so they are taken out
# of the text the headline is made from.
MATCH_START, MATCH_STOP = "\x02", "\x03"


class InvalidSearch(Exception):
    """The search text has no word, or too many, or is too long."""


class Segment(TypedDict):
    """A piece of a snippet; ``match``: it matched the query."""

    text: str
    match: bool


class SearchHit(TypedDict):
    room: str
    room_name: str
    seq: int
    author: str | None
    sent_at: str
    snippet: list[Segment]


def search_words(text: str) -> list[str]:
    """The lowercased words of a search, each once; InvalidSearch if none,
    more than ``SEARCH_MAX_WORDS``, or over ``SEARCH_MAX_CHARS``."""
    if len(text) > SEARCH_MAX_CHARS:
        raise InvalidSearch(f"Search at most {SEARCH_MAX_CHARS} characters.")
    # Composed ("é", not "e" and an accent), as keyboards type and bodies hold.
    text = unicodedata.normalize("NFC", text)
    words = list(dict.fromkeys(word.lower() for word in SEARCH_WORD.findall(text)))
    if not words:
        raise InvalidSearch("Search for at least one word (letters or digits).")
    if len(words) > SEARCH_MAX_WORDS:
        raise InvalidSearch(f"Search at most {SEARCH_MAX_WORDS} words.")
    return words


def search_vector() -> SearchVector:
    """A message body as PostgreSQL searches it; the index is over this."""
    return SearchVector("body", config=SEARCH_CONFIG)


def search(
    *, user: User, words: list[str], room: Room | None, page: int, limit: int
) -> tuple[list[SearchHit], bool]:
    """Page ``page`` (from 1) of the messages ``user`` may read that hold
    every word (as a word's start), best first, and whether more follow.

    PostgreSQL ranks by ``ts_rank`` (newest first among equals) and
    highlights with ``ts_headline``; SQLite, for laptops, matches in Python
    and ranks by recency alone.
    """
    messages = access.readable_messages(user)
    if room is not None:
        messages = messages.filter(room=room)
    offset = (page - 1) * limit
    if connection.vendor == "postgresql":
        hits = _search_postgresql(messages, words, offset, limit + 1)
    else:
        hits = _search_python(messages, words, offset, limit + 1)
    # No page past the deepest: a search that matches more is refined.
    return hits[:limit], len(hits) > limit and page < SEARCH_MAX_PAGE


HIT_FIELDS = ("pk", "room__slug", "room__name", "seq", "author_name", "sent_at")


def _hit(row: dict[str, Any], snippet: list[Segment]) -> SearchHit:
    return {
        "room": row["room__slug"],
        "room_name": row["room__name"],
        "seq": row["seq"],
        "author": row["author_name"] or None,
        "sent_at": protocol.format_timestamp(row["sent_at"]),
        "snippet": snippet,
    }


def _search_postgresql(
    messages: QuerySet[Message], words: list[str], offset: int, count: int
) -> list[SearchHit]:
    # Quoted prefix terms; the words hold letters and digits only.
    terms = " & ".join(f"'{word}':*" for word in words)
    query = SearchQuery(terms, config=SEARCH_CONFIG, search_type="raw")
    rows = list(
        messages.annotate(document=search_vector())
        .filter(document=query)
        .annotate(rank=SearchRank(F("document"), query))
        .order_by("-rank", "-sent_at", "-pk")
        .values(*HIT_FIELDS)[offset : offset + count]
    )
    # Headlines for this page only: ts_headline parses each body again. A
    # short body (most chat) is shown whole; a long one as fragments around
    # its matches, which drop the punctuation at their edges.
    text = Func(
        F("body"), Value(MATCH_START + MATCH_STOP), Value(""),
        function="translate", output_field=TextField(),
    )  # fmt: skip
    headline = Case(
        When(
            LessThanOrEqual(Length("body"), SNIPPET_CHARS),
            then=SearchHeadline(
                text,
                query,
                highlight_all=True,
                config=SEARCH_CONFIG,
                start_sel=MATCH_START,
                stop_sel=MATCH_STOP,
            ),
        ),
        default=SearchHeadline(
            text,
            query,
            max_words=20,
            min_words=8,
            # Keep a fragment's short first and last words ("a", "is").
            short_word=0,  # type: ignore[arg-type]  # an int in Django; the stub says str
            max_fragments=2,
            fragment_delimiter=" … ",
            config=SEARCH_CONFIG,
            start_sel=MATCH_START,
            stop_sel=MATCH_STOP,
        ),
    )
    snippets = dict(
        Message.objects.filter(pk__in=[row["pk"] for row in rows])
        .annotate(snippet=headline)
        .values_list("pk", "snippet")
    )
    return [_hit(row, _split_headline(snippets[row["pk"]])) for row in rows]


def _split_headline(text: str) -> list[Segment]:
    segments: list[Segment] = []
    match = False
    for part in re.split(f"([{MATCH_START}{MATCH_STOP}])", text):
        if part in (MATCH_START, MATCH_STOP):
            match = part == MATCH_START
        elif part:
            _add_segment(segments, part, match)
    return segments


def _add_segment(segments: list[Segment], text: str, match: bool) -> None:
    if segments and segments[-1]["match"] == match:
        segments[-1]["text"] += text
    else:
        segments.append({"text": text, "match": match})


def _word_pattern(words: list[str]) -> str:
    """A regular expression for any of ``words`` at the start of a word."""
    return r"(?<![^\W_])(?:" + "|".join(re.escape(word) for word in words) + ")"


def _search_python(
    messages: QuerySet[Message], words: list[str], offset: int, count: int
) -> list[SearchHit]:
    # SQLite runs REGEXP with Python's re (case-insensitive with iregex).
    for word in words:
        messages = messages.filter(body__iregex=_word_pattern([word]))
    rows = list(
        messages.order_by("-sent_at", "-pk").values(*HIT_FIELDS, "body")[
            offset : offset + count
        ]
    )
    return [_hit(row, snippet(row["body"], words)) for row in rows]


def snippet(body: str, words: list[str]) -> list[Segment]:
    """``body`` around its first match, cut to about ``SNIPPET_CHARS``, with
    each word that starts with one of ``words`` marked (SQLite's headline)."""
    pattern = re.compile(_word_pattern(words) + r"[^\W_]*", re.IGNORECASE)
    found = pattern.search(body)
    start, end = 0, len(body)
    if end > SNIPPET_CHARS:
        first = found.start() if found else 0
        start = max(0, first - SNIPPET_CHARS // 3)
        end = min(len(body), start + SNIPPET_CHARS)
        # Cut between words where there is a space to cut at.
        if start > 0 and (space := body.find(" ", start, first)) >= 0:
            start = space + 1
        if end < len(body) and (space := body.rfind(" ", first, end)) > first:
            end = space
    segments: list[Segment] = []
    if start > 0:
        _add_segment(segments, "…", False)
    at = start
    for match in pattern.finditer(body, start, end):
        _add_segment(segments, body[at : match.start()], False)
        _add_segment(segments, match.group(), True)
        at = match.end()
    _add_segment(segments, body[at:end], False)
    if end < len(body):
        _add_segment(segments, "…", False)
    return [segment for segment in segments if segment["text"]]


# --- rooms and members ---------------------------------------------------------


def slug_from_name(name: str) -> str:
    """A room slug made from a display name, or ``InvalidRoomName``."""
    # slugify keeps underscores, which room slugs do not allow.
    slug = slugify(name).replace("_", "-")
    slug = re.sub(r"-{2,}", "-", slug)[:50].strip("-")
    if not re.fullmatch(SLUG_PATTERN, slug):
        raise InvalidRoomName
    return slug


def create_room(
    *, owner: "AuthUser", name: str, slug: str | None, is_private: bool
) -> Room:
    """Create a room owned by ``owner`` (who becomes its first member).

    Raises ``SlugTaken`` or ``InvalidRoomName``.
    """
    if not slug:
        slug = slug_from_name(name)
    return save_room(Room(slug=slug, name=name, is_private=is_private, owner=owner))


def save_room(room: Room) -> Room:
    """Create or change ``room``, keeping its owner, if any, a member.

    The owner manages a private room's members and cannot leave it, so an
    owner set here (a new room, or a change of owner in the admin) is
    admitted in the same transaction. A room made private has its
    connections re-checked by ``core.signals`` once this commits; a room
    changed (not created) is announced with ``room.changed``. Raises
    ``SlugTaken``.
    """
    existed = room.pk is not None
    try:
        with transaction.atomic():
            room.save()
            if room.owner_id is not None:
                Membership.objects.get_or_create(room=room, user_id=room.owner_id)
    except IntegrityError:
        raise SlugTaken(room.slug) from None
    if existed:  # a change (the admin): its connections hear the new state
        announce_after_commit(room_id=room.pk)
    return room


def delete_rooms(rooms: QuerySet[Room]) -> None:
    """Delete rooms with their messages and memberships (the admin).

    ``core.signals`` has their connections re-check once this commits.
    """
    rooms.delete()


def ensure_room(*, slug: str, name: str) -> tuple[Room, bool]:
    """Create the public room ``slug`` if it does not exist (``make run``)."""
    return Room.objects.get_or_create(slug=slug, defaults={"name": name})


# Room.name's length, as the API takes a new name once stripped.
ROOM_NAME_MAX = 100


def rename_room(*, room: Room, actor: User, name: str) -> Room:
    """The owner renames ``room`` (``access.can_rename``); its slug stays.

    ``name`` is stripped and must then be 1-``ROOM_NAME_MAX`` characters
    (``ValueError``; the API validates it first). Only the name is written,
    so a message stored meanwhile keeps its ``last_seq``. Once this commits
    the room's connections hear ``room.changed``. Raises ``AccessDenied``,
    or ``Room.DoesNotExist`` if the room went meanwhile.
    """
    if not access.can_rename(actor, room):
        raise AccessDenied
    name = name.strip()
    if not 1 <= len(name) <= ROOM_NAME_MAX:
        raise ValueError(f"A room's name is 1-{ROOM_NAME_MAX} characters.")
    if not Room.objects.filter(pk=room.pk).update(name=name):
        raise Room.DoesNotExist
    room.name = name
    announce_after_commit(room_id=room.pk)
    return room


def add_member(*, room: Room, actor: User, username: str) -> Membership:
    """The owner admits ``username`` to a private room (idempotent)."""
    if not access.can_manage_members(actor, room):
        raise AccessDenied
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise UnknownUser(username)
    return admit_member(room=room, user=user)


def check_admission(*, room: Room, user: "AuthUser") -> None:
    """Raise unless ``user`` may be made a member of ``room``
    (``access.can_be_member``).

    ``AccessDenied`` for a public room (it has no members to add),
    ``UnknownUser`` for an inactive user.
    """
    if not access.can_be_member(user, room):
        if room.is_private:
            raise UnknownUser(user.get_username())
        raise AccessDenied


def admit_member(*, room: Room, user: "AuthUser") -> Membership:
    """Make ``user`` a member of the private ``room`` (idempotent).

    Whoever asks: ``add_member`` checks that the owner asks, and the admin
    (staff) calls this itself. Raises as ``check_admission`` does, and
    ``RoomFull`` for a new member of a room with ``ROOM_MEMBERS_MAX``. A new
    member is announced once this commits (``announce_after_commit``).
    """
    check_admission(room=room, user=user)
    with transaction.atomic():
        # The room's row is locked so that two adds at once cannot both
        # take its last place (SQLite serialises writers anyway).
        room = Room.objects.select_for_update().get(pk=room.pk)
        existing = Membership.objects.filter(room=room, user=user).first()
        if existing is not None:  # a repeat changes nothing, announces nothing
            return existing
        check_room_has_space(room)
        membership = Membership.objects.create(room=room, user=user)
    announce_after_commit(room_id=room.pk, user_id=user.pk)
    return membership


def check_room_has_space(room: Room) -> None:
    """Raise ``RoomFull`` if ``room`` has ``ROOM_MEMBERS_MAX`` members.

    Every room change is announced with its whole member list (the ``room``
    frame), so this bounds that frame as well as the list."""
    limit = settings.ROOM_MEMBERS_MAX
    if Membership.objects.filter(room=room).count() >= limit:
        raise RoomFull(limit)


def remove_member(*, room: Room, actor: User, username: str) -> None:
    """The owner removes a member, or a member leaves; their sockets close.

    The owner cannot leave their own room. Raises ``AccessDenied`` or
    ``UnknownUser`` (also for a non-member). The revocation is published by
    ``core.signals`` once the deletion commits, as for every other path that
    deletes a membership.
    """
    if not access.can_remove_member(actor, room, username):
        raise AccessDenied
    membership = Membership.objects.filter(room=room, user__username=username).first()
    if membership is None:
        raise UnknownUser(username)
    membership.room = room  # read already; spares end_membership a query
    end_membership(membership=membership)


def end_membership(*, membership: Membership) -> None:
    """Delete ``membership``; its user's connections to the room close.

    Raises ``AccessDenied`` unless ``access.can_end_membership``. The
    revocation is published by ``core.signals`` once the deletion commits,
    then ``room.changed`` and ``rooms.changed`` (``announce_after_commit``).
    """
    if not access.can_end_membership(membership):
        raise AccessDenied
    membership.delete()
    announce_after_commit(room_id=membership.room_id, user_id=membership.user_id)


class Member(TypedDict):
    """One member of a private room, as ``GET .../members/`` lists them."""

    username: str
    is_owner: bool


def member_names(room_id: int) -> list[str]:
    """The usernames of a room's members, sorted (code point order)."""
    names = Membership.objects.filter(room_id=room_id).values_list(
        "user__username", flat=True
    )
    return sorted(names)


def members(room: Room) -> list[Member]:
    """A private room's members by username, its owner marked. A public
    room admits everyone and has no members to list: ``[]``."""
    if not room.is_private:
        return []
    rows = Membership.objects.filter(room=room).values_list("user_id", "user__username")
    return [
        {"username": username, "is_owner": user_id == room.owner_id}
        for user_id, username in sorted(rows, key=lambda row: row[1])
    ]


def room_changed_event(room_id: int) -> dict[str, Any] | None:
    """``room.changed`` for a room as the database has it now: its slug, its
    name and, for a private room, its members' usernames sorted (``null``
    for a public room). None if the room is gone."""
    room = Room.objects.filter(pk=room_id).values("slug", "name", "is_private")
    found = room.first()
    if found is None:
        return None
    names = member_names(room_id) if found["is_private"] else None
    return {
        "type": "room.changed",
        "slug": found["slug"],
        "name": found["name"],
        "members": names,
    }


def announce_after_commit(*, room_id: int, user_id: int | None = None) -> None:
    """Once the current transaction commits (at once outside one), publish
    ``room.changed`` to the room's connections (read after the commit, so
    it holds the change) and, for a member added or removed,
    ``rooms.changed`` to that user's connections. A failure is logged, not
    raised: the change itself is committed, and clients re-read on their
    next rooms frame or GET."""

    def announce() -> None:
        event = room_changed_event(room_id)
        if event is not None:
            async_to_sync(publish)(room_group(room_id), event)
        if user_id is not None:
            async_to_sync(publish)(user_group(user_id), {"type": "rooms.changed"})

    transaction.on_commit(announce, robust=True)


# Usernames per ``GET /api/users/`` answer, and the longest prefix (auth's
# User.username is 150 characters).
USER_LOOKUP_LIMIT = 10
USERNAME_MAX = 150
# The characters of a username (Django's UnicodeUsernameValidator).
USERNAME_CHARS = re.compile(r"[\w.@+-]+")


def usernames_starting_with(prefix: str) -> list[str]:
    """Up to ``USER_LOOKUP_LIMIT`` active usernames that start with
    ``prefix``, whatever the case, sorted (code point order, on every
    database)."""
    if not USERNAME_CHARS.fullmatch(prefix):
        return []  # no username holds it (nor a NUL, which PostgreSQL refuses)
    users = get_user_model().objects.filter(
        is_active=True, username__istartswith=prefix
    )
    # PostgreSQL sorts by the database's collation unless told; SQLite's
    # default (BINARY) is code point order already.
    if connection.vendor == "postgresql":
        users = users.order_by(Collate("username", "C"))
    else:
        users = users.order_by("username")
    return list(users.values_list("username", flat=True)[:USER_LOOKUP_LIMIT])


# --- accounts -------------------------------------------------------------------


def sign_up(*, username: str, password: str) -> "AuthUser":
    """Create the account ``username`` (the sign-up page; its form has
    validated both). Hashes the password: callers hold a hashing slot."""
    return get_user_model().objects.create_user(username=username, password=password)


def issue_token(user: "AuthUser") -> str:
    """The user's API token key, made on first use (one token per user)."""
    token, _ = Token.objects.get_or_create(user=user)
    key: str = token.key
    return key


# Set on a user while ``change_password`` saves it: ``core.signals`` then
# leaves the user's API token and the kept session's connections alone
# (this function ends the other sessions itself).
KEEPS_SESSION_ATTR = "_switchboard_keeps_session"
# Session rows read per query while looking for a user's sessions.
SESSIONS_CHUNK = 500


def change_password(
    *, user: "AuthUser", new_password: str, keep_session: SessionBase
) -> int:
    """Set ``user``'s password from the account page; how many other
    sessions ended.

    ``keep_session`` (the browser that asked) stays signed in: it gets the
    new session hash, in the same transaction, under the same key, so the
    connections it opened keep their access (a rotated key would be a
    session the warden no longer finds). Every other session of the user
    is deleted, and ``core.signals`` closes each one's connections with
    4403 once this commits. The API token is kept (docs/security.md says
    why); the account page revokes it separately. Once committed, the
    user's connections re-check their access too, which closes any signed
    in by a session this missed (their session hash is the old one).
    Hashes the new password: callers hold a hashing slot.
    """
    with transaction.atomic():
        user.set_password(new_password)
        setattr(user, KEEPS_SESSION_ATTR, True)
        try:
            user.save(update_fields=["password"])
        finally:
            delattr(user, KEEPS_SESSION_ATTR)  # request.user: a lazy proxy
        keep_session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        keep_session.save()
        others = _session_keys_of(user.pk, besides=keep_session.session_key)
        for start in range(0, len(others), SESSIONS_CHUNK):
            chunk = others[start : start + SESSIONS_CHUNK]
            Session.objects.filter(session_key__in=chunk).delete()
    user_id = user.pk
    transaction.on_commit(lambda: recheck_access(user_id=user_id))
    return len(others)


def _session_keys_of(user_id: int, *, besides: str | None) -> list[str]:
    """The keys of the unexpired sessions signed in as ``user_id``, but
    ``besides``. Sessions are not indexed by user: this decodes every
    unexpired session, one pass."""
    keys = []
    sessions = Session.objects.filter(expire_date__gt=timezone.now())
    for session in sessions.exclude(session_key=besides).iterator(SESSIONS_CHUNK):
        if str(session.get_decoded().get(SESSION_KEY)) == str(user_id):
            keys.append(session.session_key)
    return keys


def revoke_tokens(*, user_id: int) -> None:
    """Delete the user's API token; ``core.signals`` closes the connections
    each deleted token signed in, once the deletion commits."""
    Token.objects.filter(user_id=user_id).delete()


def delete_tokens(tokens: QuerySet[Token]) -> None:
    """Delete these tokens (the admin), with the same consequences."""
    tokens.delete()


def ensure_user(
    *, username: str, password: str, is_staff: bool = False
) -> tuple["AuthUser", bool]:
    """Create ``username`` with ``password`` if it does not exist; (user, created).

    An existing user keeps their password; ``is_staff`` only ever raises
    their rights (the ``ensure_user`` command, for operators and test rigs).
    """
    model = get_user_model()
    with transaction.atomic():
        user, created = model.objects.get_or_create(
            username=username, defaults={"is_staff": is_staff}
        )
        if created:
            user.set_password(password)
            user.save(update_fields=["password"])
        elif is_staff and not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
    return user, created


# --- access changes ---------------------------------------------------------------


def revoke_access(
    *, user_id: int, room: str | None = None, credential: str | None = None
) -> None:
    """Close a user's affected connections on every instance with 4403.

    ``room``: only that room's connections; ``credential``: only connections
    authenticated by that session or token (see ``credential_id``). Called
    after the change has committed; ``core.signals`` calls it for every path
    that deletes a membership, token, session or user.
    """
    event = {"type": "access.revoked", "room": room, "credential": credential}
    async_to_sync(publish)(user_group(user_id), event)


def recheck_access(*, room_id: int | None = None, user_id: int | None = None) -> None:
    """Have a room's or a user's connections re-check their access now.

    Every instance's connections in that room (or of that user) read their
    access again from the database and close with 4403 if it is gone. For
    changes that are not one user's loss of one room: a room deleted or
    made private, a membership removed by a path other than
    ``remove_member``. Called after the change has committed.
    """
    event = {"type": "access.recheck"}
    if room_id is not None:
        async_to_sync(publish)(room_group(room_id), event)
    if user_id is not None:
        async_to_sync(publish)(user_group(user_id), event)


def broadcast_typing_sync(*, room_id: int, user: str, sender: str) -> None:
    """``broadcast_typing`` from synchronous code (the HTTP API)."""
    async_to_sync(broadcast_typing)(room_id=room_id, user=user, sender=sender)


async def broadcast_typing(*, room_id: int, user: str, sender: str) -> None:
    """Tell the room's other connections that ``user`` is typing.

    ``sender`` is the typing connection's id; it does not hear itself.
    """
    await publish(
        room_group(room_id), {"type": "room.typing", "user": user, "sender": sender}
    )


# --- read positions ---------------------------------------------------------------


@dataclass(frozen=True)
class ReadResult:
    """A read position after ``mark_read``, and whether it moved."""

    state: reads.ReadState
    moved: bool


def store_read(*, user: User, room: Room, seq: int) -> ReadResult:
    """Move ``user``'s read position in ``room`` forward to ``seq``.

    Clamped to the room's ``last_seq`` (read here, not the caller's copy),
    and never backwards: a tab that saw less, or a frame that arrives late,
    leaves a further position alone. Raises ``NotSignedIn``,
    ``AccessDenied`` or ``Room.DoesNotExist``. Does not publish.
    """
    if not access.is_signed_in(user):
        raise NotSignedIn
    room = Room.objects.get(pk=room.pk)
    if not access.can_read(user, room):
        raise AccessDenied
    seq = min(seq, room.last_seq)
    with transaction.atomic():
        position, created = ReadPosition.objects.get_or_create(
            user=user, room=room, defaults={"seq": seq}
        )
        # Forward only, in one conditional UPDATE: concurrent moves keep
        # the larger (a GREATEST without a read-modify-write).
        moved = created or bool(
            ReadPosition.objects.filter(pk=position.pk, seq__lt=seq).update(
                seq=seq, updated_at=timezone.now()
            )
        )
    return ReadResult(reads.room_state(user, room), moved)


def read_moved_event(state: reads.ReadState) -> dict[str, Any]:
    """The user-group event every watching connection turns into ``read``."""
    return {"type": "read.moved", **state.as_dict()}


async def mark_read(*, user: User, room: Room, seq: int) -> ReadResult:
    """``store_read``, then tell every connection of the user (all tabs, all
    instances) if the position moved."""
    result = await db.run(store_read)(user=user, room=room, seq=seq)
    if result.moved:
        await publish(user_group(user.pk), read_moved_event(result.state))  # type: ignore[arg-type]  # signed in: pk is set
    return result


def mark_read_sync(*, user: User, room: Room, seq: int) -> ReadResult:
    """The synchronous twin of ``mark_read`` (the HTTP API)."""
    result = store_read(user=user, room=room, seq=seq)
    if result.moved:
        group, event = user_group(user.pk), read_moved_event(result.state)  # type: ignore[arg-type]  # signed in: pk is set
        transaction.on_commit(lambda: async_to_sync(publish)(group, event))
    return result
