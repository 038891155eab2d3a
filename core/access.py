"""Who may see, post and manage in a room: one function per rule.

Every interface (consumer handshake, frames, API, pages, admin) and every
write in ``core.services`` asks these, so the rules live here and nowhere
else (tests/unit/test_one_writer.py keeps it so). Unknown and invisible
rooms look the same to callers.
"""

from typing import TYPE_CHECKING, TypeAlias

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from core.models import Membership, Message, Room

if TYPE_CHECKING:
    # The stubs resolve AUTH_USER_MODEL to auth's User, which model fields
    # and lookups expect; at run time the alias stays as it was.
    from django.contrib.auth.models import User as AuthUser
    from typing_extensions import TypeIs

    User: TypeAlias = AuthUser | AnonymousUser
else:
    User = AbstractBaseUser | AnonymousUser


def is_signed_in(user: User | None) -> "TypeIs[AuthUser]":
    """True for a signed-in user; False for an anonymous visitor (or None).

    Every write (send, edit, delete, typing, token revocation) needs it;
    callers answer "sign in" when it is False.
    """
    return user is not None and bool(user.is_authenticated)


def can_write(user: User) -> bool:
    """Signed in and active, as far as this copy of the user knows.

    Writers that store read ``is_active`` again where they store
    (``can_post_now``): this copy may predate a deactivation.
    """
    return is_signed_in(user) and bool(user.is_active)


def is_member(user: User, room: Room) -> bool:
    """True if ``user`` belongs to ``room`` (an owner is a member)."""
    if not is_signed_in(user):
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
    """Signed-in users post where they can read; anonymous users never post.

    ``can_post_now`` is the same rule read from the database in one
    statement, as the store paths check it.
    """
    if not can_write(user):
        return False
    return can_read(user, room)


# ``can_post``'s conditions that can change under a caller, as SQL, for the
# store paths: the author still active and, in a private room, still a
# member. ``system``: no author (a system message, e.g. announce), always
# allowed. Table and column names as core/models.py and django.contrib.auth
# define them (tests/unit/test_services.py keeps them in step). Parameters:
# ``system``, ``author``, ``room``, ``is_private``. tests/unit/test_access.py
# (SQLite) and tests/integration/test_services.py (PostgreSQL) run a matrix
# of users and rooms through it and through ``can_post`` and compare.
POST_RIGHT_SQL = """(%(system)s OR EXISTS (
            SELECT 1 FROM auth_user WHERE id = %(author)s AND is_active
        ))
        AND (%(system)s OR NOT %(is_private)s OR EXISTS (
            SELECT 1 FROM core_membership
            WHERE room_id = %(room)s AND user_id = %(author)s
        ))"""


def post_right_params(user: User | None, room: Room) -> dict[str, bool | int | None]:
    """The parameters of ``POST_RIGHT_SQL`` for ``user`` (None: system) in
    ``room`` as this copy of the room has it."""
    return {
        "system": user is None,
        "author": user.pk if user is not None else None,
        "room": room.pk,
        "is_private": room.is_private,
    }


def can_post_now(user: User, room: Room) -> bool:
    """``can_post`` with the user's activity and membership read from the
    database now (``POST_RIGHT_SQL``), in one query; ``room`` as read.

    The caller has checked ``can_write`` on its copy of the user (no query).
    """
    if not can_write(user):
        return False
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {POST_RIGHT_SQL}", post_right_params(user, room))
        return bool(cursor.fetchone()[0])


def can_manage_members(user: User, room: Room) -> bool:
    """Only the owner of a private room adds or removes its members."""
    if not room.is_private:
        return False
    if not is_signed_in(user):
        return False
    return room.owner_id == user.pk


def can_leave(user: User, room: Room) -> bool:
    """A member leaves a private room; its owner cannot (they manage it).

    A public room admits everyone: there is nothing to leave.
    """
    if not room.is_private or not is_signed_in(user):
        return False
    return room.owner_id != user.pk


def can_rename(user: User, room: Room) -> bool:
    """A room's owner renames it, public or private; nobody else does.

    An ownerless room (its owner deleted) is renamed in the admin only: a
    signed-in user's pk is never None.
    """
    if not can_write(user):
        return False
    return room.owner_id == user.pk


def can_remove_member(actor: User, room: Room, username: str) -> bool:
    """The owner removes a member; a member removes themself (leaves)."""
    if is_signed_in(actor) and actor.get_username() == username:
        return can_leave(actor, room)
    return can_manage_members(actor, room)


def can_end_membership(membership: Membership) -> bool:
    """True if ``membership`` may be deleted, whoever asks (the admin too).

    Not in a public room: it admits everyone, and a deletion would close the
    user's connections there for nothing. Not the owner's own: an owner
    cannot leave their room.
    """
    room = membership.room
    if not room.is_private:
        return False
    return membership.user_id != room.owner_id


def can_be_member(user: "AuthUser", room: Room) -> bool:
    """Only private rooms have members to add (a public room admits
    everyone), and only active users join."""
    return room.is_private and bool(user.is_active)


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
    if not is_signed_in(user):
        return False
    return room.owner_id == user.pk or bool(user.is_staff)


def visible_rooms(user: User) -> QuerySet[Room]:
    """The rooms ``user`` may read: ``can_read`` as a queryset filter.

    Public rooms, plus the private rooms an active ``user`` belongs to. An
    ``EXISTS``, not a join: no duplicate rooms, and it composes as a
    subquery (``readable_messages``).
    """
    public = Q(is_private=False)
    if not is_signed_in(user) or not user.is_active:
        return Room.objects.filter(public)
    member = Exists(Membership.objects.filter(room=OuterRef("pk"), user=user))
    return Room.objects.filter(public | member)


def readable_messages(user: User) -> QuerySet[Message]:
    """The messages ``user`` may find (search): those of the rooms they may
    read, as they stand now. Change events (edits, deletions) are not
    messages of their own, and a deleted message is found by nobody."""
    return Message.objects.filter(
        room__in=visible_rooms(user), kind=Message.Kind.MESSAGE, deleted=False
    )


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
