"""One matrix of users x rooms through ``services.search``: no result ever
comes from a room the user may not read, nor from a deleted message.

Every room holds a message with the word "needle"; the public room also
holds a deleted one, and one edited away from "needle" to "thread". Shared
by tests/unit/test_search.py (SQLite) and tests/integration/test_search.py
(PostgreSQL, through ``manage.py shell``), so both databases answer the
same matrix.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from core import services
from core.models import Membership, Room

USERS = (
    "anonymous",
    "non-member",
    "member",
    "owner",
    "staff-non-member",
    "removed-member",
    "deactivated-member",
)
ROOMS = ("public", "private", "other-private")

# Who finds what: ``access.can_read`` as a filter. A private room admits its
# active members only (staff get no private rooms); "other-private" is the
# owner's alone, so a member of "private" is not one of it. A deactivated
# account reads what anonymous visitors read (its token is refused anyway,
# and its session is anonymous: tests/unit/test_access.py).
EXPECTED = {
    "anonymous": ["public"],
    "non-member": ["public"],
    "member": ["private", "public"],
    "owner": ["other-private", "private", "public"],
    "staff-non-member": ["public"],
    "removed-member": ["public"],
    "deactivated-member": ["public"],
}


def outcomes(tag: str) -> dict[str, object]:
    """What each user finds: "all" (every room), "each" (with each room as
    the filter), and what "thread" finds (the edited message, once)."""
    model = get_user_model()
    users = {
        name: model.objects.create_user(
            f"{name}-{tag}", is_staff=name == "staff-non-member"
        )
        for name in USERS
        if name != "anonymous"
    }
    owner = users["owner"]
    rooms = {
        "public": Room.objects.create(slug=f"public-{tag}", name="p", owner=owner),
        "private": Room.objects.create(
            slug=f"private-{tag}", name="p", owner=owner, is_private=True
        ),
        "other-private": Room.objects.create(
            slug=f"other-{tag}", name="p", owner=owner, is_private=True
        ),
    }
    Membership.objects.create(room=rooms["other-private"], user=owner)
    for name in ("member", "owner", "removed-member", "deactivated-member"):
        Membership.objects.create(room=rooms["private"], user=users[name])
    for room in rooms.values():
        services.store_message(
            room=room, author=owner, body="a needle here", client_id=None
        )
    public = rooms["public"]
    gone = services.store_message(
        room=public, author=owner, body="needle deleted", client_id=None
    )
    services.store_change(
        room=public, actor=owner, seq=gone.message["seq"], body=None, client_id=None
    )
    edited = services.store_message(
        room=public, author=owner, body="needle before", client_id=None
    )
    services.store_change(
        room=public,
        actor=owner,
        seq=edited.message["seq"],
        body="thread after",
        client_id=None,
    )
    Membership.objects.filter(user=users["removed-member"]).delete()
    model.objects.filter(pk=users["deactivated-member"].pk).update(is_active=False)

    names = {room.slug: name for name, room in rooms.items()}
    found: dict[str, object] = {}
    for name in USERS:
        user = (
            AnonymousUser()
            if name == "anonymous"
            else model.objects.get(pk=users[name].pk)
        )

        def rooms_found(
            room: Room | None, words: list[str], who: object = user
        ) -> list:
            hits, _ = services.search(
                user=who, words=words, room=room, page=1, limit=50
            )
            return sorted(names[hit["room"]] for hit in hits)

        found[name] = {
            "all": rooms_found(None, ["needle"]),
            "each": {
                room_name: rooms_found(room, ["needle"])
                for room_name, room in rooms.items()
            },
            "deleted": rooms_found(None, ["deleted"]),
            "thread": rooms_found(None, ["thread"]),
        }
    return found


def expected() -> dict[str, object]:
    return {
        name: {
            "all": readable,
            "each": {room: [room] if room in readable else [] for room in ROOMS},
            "deleted": [],
            "thread": ["public"],
        }
        for name, readable in EXPECTED.items()
    }
