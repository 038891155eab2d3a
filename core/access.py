"""Who may see and post in a room: one function per rule.

Every interface (consumer handshake, frames, API, pages) asks these, so the
rules live in one place. Unknown and invisible rooms look the same to callers.
"""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from core.models import Membership, Room

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
    if not user.is_active:
        return False
    return is_member(user, room)


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
