"""One matrix of users x rooms through the three forms of the post right.

``access.can_post`` (Python, on copies read now), ``access.POST_RIGHT_SQL``
(the SQL both store paths run) and ``services.store_message`` itself
(SQLite: a query before the insert; PostgreSQL: inside the one statement).
Every user's copy is read while they are active and still a member, then
the database changes under it, so the store paths must find out themselves.

Shared by tests/unit/test_access.py (SQLite) and
tests/integration/test_services.py (PostgreSQL, through ``manage.py shell``)
so both databases answer the same matrix.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connection

from core import access, services
from core.models import Membership, Room

USERS = (
    "system",
    "anonymous",
    "non-member",
    "member",
    "owner",
    "staff-non-member",
    "removed-member",
    "deactivated-member",
)
ROOMS = ("public", "private", "ownerless-private")

# What a user would check: who may post where. A private room admits its
# members only (an ownerless one has no owner among them); staff get no
# private rooms; a removed or deactivated member posts nowhere private, and
# a deactivated one nowhere at all.
EXPECTED = {
    "system": {"public", "private", "ownerless-private"},
    "anonymous": set(),
    "non-member": {"public"},
    "member": {"public", "private", "ownerless-private"},
    "owner": {"public", "private"},
    "staff-non-member": {"public"},
    "removed-member": {"public"},
    "deactivated-member": set(),
}


def _post_right_sql(user: object, room: Room) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {access.POST_RIGHT_SQL}", access.post_right_params(user, room)
        )
        return bool(cursor.fetchone()[0])


def _store(user: object, room: Room, body: str) -> bool:
    try:
        services.store_message(room=room, author=user, body=body, client_id=None)
    except services.AccessDenied:  # NotSignedIn too
        return False
    return True


def outcomes(tag: str) -> dict[str, dict[str, list[bool]]]:
    """user -> room -> [can_post, POST_RIGHT_SQL, stored]."""
    model = get_user_model()
    users = {
        name: model.objects.create_user(
            f"{name}-{tag}", is_staff=name == "staff-non-member"
        )
        for name in USERS
        if name not in ("system", "anonymous")
    }
    owner = users["owner"]
    rooms = {
        "public": Room.objects.create(slug=f"public-{tag}", name="p", owner=owner),
        "private": Room.objects.create(
            slug=f"private-{tag}", name="p", owner=owner, is_private=True
        ),
        "ownerless-private": Room.objects.create(
            slug=f"ownerless-{tag}", name="p", is_private=True
        ),
    }
    for room in rooms.values():
        for name in ("member", "owner", "removed-member", "deactivated-member"):
            if not (name == "owner" and room.owner_id is None):
                Membership.objects.create(room=room, user=users[name])
    # The callers' copies, read before the changes below.
    copies: dict[str, object] = {
        name: model.objects.get(pk=user.pk) for name, user in users.items()
    }
    copies["system"] = None
    copies["anonymous"] = AnonymousUser()
    Membership.objects.filter(user=users["removed-member"]).delete()
    model.objects.filter(pk=users["deactivated-member"].pk).update(is_active=False)

    found: dict[str, dict[str, list[bool]]] = {}
    for name, copy in copies.items():
        found[name] = {}
        for room_name, room in rooms.items():
            if copy is None or isinstance(copy, AnonymousUser):
                fresh = copy
            else:
                fresh = model.objects.get(pk=copy.pk)
            python = True if fresh is None else access.can_post(fresh, room)
            found[name][room_name] = [
                python,
                _post_right_sql(copy, room),
                _store(copy, room, f"{name} in {room_name}"),
            ]
    return found
