"""Who may see and post in a room: one function per rule.

Every interface (consumer handshake, frames, API, pages) asks these, so the
rules live in one place. Unknown and invisible rooms look the same to callers.
"""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import Q, QuerySet

from core.models import Membership, Message, Room

User = AbstractBaseUser | AnonymousUser


def is_member(user: User, room: Room) -> bool:
    """True if ``user`` belongs to ``room`` (an owner is a member)."""
    if not user.is_authenticated:
        return False
    return Membership.objects.filter(room=room, user=user).exists()


def can_read(user: User, room: Room) -> bool:
    """Anyone reads a public room; a private room admits its members only."""
    if not room.is_private:
        return True
    return _may_read(user, room, is_member=is_member(user, room))


def _may_read(user: User, room: Room, *, is_member: bool) -> bool:
    return not room.is_private or (user.is_active and is_member)


def can_post(user: User, room: Room) -> bool:
    """Signed-in users post where they can read; anonymous users never post."""
    if not user.is_authenticated:
        return False
    if not user.is_active:
        return False
    return can_read(user, room)


def can_manage_members(user: User, room: Room) -> bool:
    """Only the owner of a private room adds or removes its members."""
    if not room.is_private:
        return False
    if not user.is_authenticated:
        return False
    return room.owner_id == user.pk


def can_edit(user: User, message: Message) -> bool:
    """Only its author edits a message; nobody edits a system message."""
    return message.author_id is not None and message.author_id == user.pk


def can_delete(user: User, room: Room, message: Message) -> bool:
    """Its author, the room's owner, or staff delete a message."""
    return (
        can_edit(user, message)
        or (room.owner_id is not None and room.owner_id == user.pk)
        or bool(user.is_staff)
    )


def can_audit(user: User, room: Room) -> bool:
    """A room's owner and staff see who deleted what in it."""
    if not user.is_authenticated:
        return False
    return room.owner_id == user.pk or bool(user.is_staff)


def visible_rooms(user: User) -> QuerySet[Room]:
    """Public rooms, plus the private rooms ``user`` belongs to."""
    if not user.is_authenticated:
        return Room.objects.filter(is_private=False)
    return Room.objects.filter(
        Q(is_private=False) | Q(membership__user=user)
    ).distinct()


def readable_room(user: User, slug: str) -> Room | None:
    """The room called ``slug`` if ``user`` may read it, else None."""
    try:
        room = Room.objects.get(slug=slug)  # no ORDER BY, unlike first()
    except Room.DoesNotExist:
        return None
    return room if can_read(user, room) else None


# The columns a connection uses; the rest load on access (synchronous code).
HANDSHAKE_ROOM_FIELDS = ("id", "slug", "name", "is_private", "owner_id", "last_seq")


HANDSHAKE_ROOM_SQL = """
SELECT r.id, r.slug, r.name, r.is_private, r.owner_id, r.last_seq,
    EXISTS (SELECT 1 FROM core_membership m WHERE m.room_id = r.id AND m.user_id = %s)
FROM core_room r WHERE r.slug = %s
"""


def handshake_room(user: User, slug: str) -> Room | None:
    """``readable_room`` in one SQL statement, for handshakes.

    The room and the user's membership are read together, and the ORM's
    query building (most of a handshake's database time, measured) is
    skipped. The room comes with ``HANDSHAKE_ROOM_FIELDS`` only.
    """
    user_id = user.pk  # None for an anonymous visitor
    with connection.cursor() as cursor:
        cursor.execute(HANDSHAKE_ROOM_SQL, [user_id, slug])
        row = cursor.fetchone()
    if row is None:
        return None
    room = Room.from_db(connection.alias, HANDSHAKE_ROOM_FIELDS, row[:-1])
    return room if _may_read(user, room, is_member=bool(row[-1])) else None
