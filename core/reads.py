"""Read positions, read: unread and mention counts (docs/protocol.md, 18).

Unread, for a user and a room: messages (not edits or deletions), not
deleted, above the user's read position, by someone else. With no read
position yet, the messages sent after the user joined (a private room's
membership, a public room's account) count instead, so a new user does not
see the whole history as unread. Mentions: those of them that name the user
(``core.mentions``). Counts stop at ``COUNT_CAP`` ("999 or more").

Every count is a correlated subquery per room in one query, bounded to a
room's newest ``COUNT_WINDOW`` events (the unique (room, seq) index), so a
sidebar of 200 rooms is one query whatever the history behind them. The
database only narrows mentions down (bodies containing "@name"); a second
query, run only when there are such candidates, reads them and applies the
one rule in Python. The
one writer of read positions is ``core.services.mark_read``.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from django.db.models import (
    Case,
    Count,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Greatest

from core import access, mentions
from core.models import Membership, Message, ReadPosition, Room

if TYPE_CHECKING:
    from django.contrib.auth.models import User as AuthUser

# "999" means 999 or more: a badge needs no more, and counting stops there.
COUNT_CAP = 999
# Only a room's newest events are counted: a reader further behind sees
# what those hold (999 unless nearly all are edits, deletions or their own).
COUNT_WINDOW = 5 * (COUNT_CAP + 1)
# Before any message: "no row" falls back to the joining time, a row does not.
_DAWN = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReadState:
    """One user's read position in one room, with its counts."""

    room: str
    read_seq: int
    unread: int
    mentions: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "read_seq": self.read_seq,
            "unread": self.unread,
            "mentions": self.mentions,
        }


class RoomEntry(TypedDict):
    """A room of the ``rooms`` frame."""

    slug: str
    name: str
    is_private: bool
    last_seq: int
    read_seq: int
    unread: int
    mentions: int


def _with_counts(rooms: QuerySet[Room], user: "AuthUser") -> QuerySet[Room]:
    """``rooms`` with ``read_seq``, ``unread`` and ``mentions`` for ``user``
    (signed in), each a correlated subquery: one query for any number."""
    position = ReadPosition.objects.filter(user_id=user.pk, room=OuterRef("pk"))
    joined = Membership.objects.filter(user_id=user.pk, room=OuterRef("pk"))
    rooms = rooms.annotate(position=Subquery(position.values("seq")[:1]))
    rooms = rooms.annotate(
        floor=Greatest(Coalesce(F("position"), Value(0)), F("last_seq") - COUNT_WINDOW),
        since=Case(
            When(position__isnull=False, then=Value(_DAWN)),
            When(is_private=True, then=Subquery(joined.values("joined_at")[:1])),
            default=Value(user.date_joined),
        ),
    )
    counted = (
        Message.objects.filter(
            room=OuterRef("pk"),
            kind=Message.Kind.MESSAGE,
            deleted=False,
            seq__gt=OuterRef("floor"),
            sent_at__gt=OuterRef("since"),
        )
        .exclude(author_id=user.pk)  # NULL authors (system messages) count
        .order_by()
    )
    return rooms.annotate(
        unread=Coalesce(_count(counted), Value(0)),
        maybe_named=Coalesce(_count(_maybe_named(counted, user)), Value(0)),
    )


def _maybe_named(messages: QuerySet[Message], user: "AuthUser") -> QuerySet[Message]:
    """Those of ``messages`` that may mention ``user`` (a superset)."""
    needle = mentions.db_needle(user.get_username())
    return messages.filter(body__icontains=needle) if needle else messages.none()


def _mentions(user: "AuthUser", rows: list[dict[str, Any]]) -> dict[int, int]:
    """Per room of ``rows``, the messages that mention ``user`` by the one
    rule (``core.mentions``), read only for rooms where the database found
    candidates: a second query, and usually none."""
    where = Q()
    for row in rows:
        if row["maybe_named"]:
            where |= Q(
                room_id=row["pk"], seq__gt=row["floor"], sent_at__gt=row["since"]
            )
    if not where:
        return {}
    candidates = _maybe_named(
        Message.objects.filter(where, kind=Message.Kind.MESSAGE, deleted=False)
        .exclude(author_id=user.pk)
        .order_by(),
        user,
    )
    found: dict[int, int] = {}
    username = user.get_username()
    for room_id, body in candidates.values_list("room_id", "body"):
        if mentions.mentions(body, username):
            found[room_id] = found.get(room_id, 0) + 1
    return found


# What both readers take from _with_counts.
_FIELDS = ("pk", "slug", "position", "floor", "since", "unread", "maybe_named")


def _count(messages: QuerySet[Message]) -> Subquery:
    return Subquery(messages.values("room").annotate(n=Count("pk")).values("n"))


def _capped(count: int) -> int:
    return min(count, COUNT_CAP)


def room_state(user: "AuthUser", room: Room) -> ReadState:
    """``user``'s read position and counts in ``room`` (one query)."""
    row = _with_counts(Room.objects.filter(pk=room.pk), user).values(*_FIELDS).get()
    named = _mentions(user, [row]).get(row["pk"], 0)
    return ReadState(
        row["slug"], row["position"] or 0, _capped(row["unread"]), _capped(named)
    )


def watched_rooms(user: "AuthUser", limit: int) -> tuple[list[RoomEntry], bool]:
    """Every room ``user`` may read, by slug, with counts, at most
    ``limit``; and whether there were more (one query)."""
    rows = list(
        _with_counts(access.visible_rooms(user).order_by("slug"), user).values(
            *_FIELDS, "name", "is_private", "last_seq"
        )[: limit + 1]
    )
    named = _mentions(user, rows[:limit])
    rooms: list[RoomEntry] = [
        {
            "slug": row["slug"],
            "name": row["name"],
            "is_private": row["is_private"],
            "last_seq": row["last_seq"],
            "read_seq": row["position"] or 0,
            "unread": _capped(row["unread"]),
            "mentions": _capped(named.get(row["pk"], 0)),
        }
        for row in rows[:limit]
    ]
    return rooms, len(rows) > limit


def watched_ids(user: "AuthUser", limit: int) -> dict[int, str]:
    """The ids (and slugs) of the rooms ``watched_rooms`` lists, without
    counting: the groups a watcher joins before it reads the counts."""
    rows = access.visible_rooms(user).order_by("slug").values_list("pk", "slug")
    return dict(rows[:limit])
