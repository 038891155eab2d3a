"""Room management over HTTP (docs/protocol.md section 15): renaming a room,
listing a private room's members, looking usernames up; and the layer events
that announce room changes (``room.changed``, ``rooms.changed``, section 12).

Events are read from the in-memory channel layer by a test channel added to
the group a connection would join, after a JSON round trip (``next_event``).
"""

import pytest
from rest_framework.test import APIClient

from core import access, services
from core.models import Membership, Room
from tests.factories import RoomFactory, UserFactory, private_room
from tests.unit.conftest import next_event
from tests.unit.test_api import assert_json_error, assert_no_event, client_for

pytestmark = pytest.mark.django_db

ROOM_FIELDS = {"slug", "name", "is_private", "last_seq", "last_message_at"}


def room_url(slug: str) -> str:
    return f"/api/rooms/{slug}/"


def members_url(slug: str, username: str | None = None) -> str:
    url = f"/api/rooms/{slug}/members/"
    return f"{url}{username}/" if username else url


def patch_json(client: APIClient, url: str, data: object) -> object:
    return client.patch(url, data, format="json")


def patch_raw(client: APIClient, url: str, text: str) -> object:
    return client.generic("PATCH", url, text, content_type="application/json")


def event_fields(event: dict) -> dict:
    """The event without its routing extra (the group it was sent to)."""
    return {key: value for key, value in event.items() if key != "group"}


# --- renaming ----------------------------------------------------------------------


def test_owner_renames_a_private_room_and_its_connections_hear_after_commit(
    listen, django_capture_on_commit_callbacks
):
    owner, bob = UserFactory(username="olive"), UserFactory(username="bob")
    room = private_room(owner, bob, slug="ops")
    in_room = listen(services.room_group(room.pk))

    with django_capture_on_commit_callbacks() as callbacks:
        response = patch_json(client_for(owner), room_url("ops"), {"name": " Ops 2 "})
        assert response.status_code == 200, response.content
        assert_no_event(in_room)  # nothing before the commit
    assert response.json()["name"] == "Ops 2"  # stripped
    assert set(response.json()) == ROOM_FIELDS
    assert response.json()["slug"] == "ops"  # the slug never changes
    assert Room.objects.get(pk=room.pk).name == "Ops 2"

    for callback in callbacks:
        callback()
    assert event_fields(next_event(in_room)) == {
        "type": "room.changed",
        "slug": "ops",
        "name": "Ops 2",
        "members": ["bob", "olive"],
    }
    assert_no_event(in_room)


def test_owner_renames_a_public_room_whose_event_names_no_members(
    listen, django_capture_on_commit_callbacks
):
    owner = UserFactory()
    room = RoomFactory(slug="lobby", owner=owner)
    in_room = listen(services.room_group(room.pk))
    with django_capture_on_commit_callbacks(execute=True):
        response = patch_json(client_for(owner), room_url("lobby"), {"name": "Hall"})
    assert response.status_code == 200
    assert event_fields(next_event(in_room)) == {
        "type": "room.changed",
        "slug": "lobby",
        "name": "Hall",
        "members": None,
    }


def test_rename_keeps_the_rooms_other_fields_and_ignores_extra_ones():
    owner = UserFactory()
    room = private_room(owner, slug="ops")
    services.store_message(room=room, author=owner, body="hi", client_id=None)
    body = {"name": "New", "slug": "other", "is_private": False, "last_seq": 99}
    response = patch_json(client_for(owner), room_url("ops"), body)
    assert response.status_code == 200
    stored = Room.objects.get(pk=room.pk)
    assert (stored.slug, stored.name, stored.is_private, stored.last_seq) == (
        "ops",
        "New",
        True,
        1,
    )
    assert response.json()["last_seq"] == 1


def test_a_name_of_100_characters_is_accepted_once_stripped():
    owner = UserFactory()
    RoomFactory(slug="lobby", owner=owner)
    name = "n" * 100
    response = patch_json(client_for(owner), room_url("lobby"), {"name": f"  {name} "})
    assert response.status_code == 200
    assert response.json()["name"] == name


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="missing"),
        pytest.param({"name": ""}, id="empty"),
        pytest.param({"name": "   \t "}, id="blank"),
        pytest.param({"name": "n" * 101}, id="too-long"),
        pytest.param({"name": 42}, id="number"),
        pytest.param({"name": None}, id="null"),
        pytest.param({"name": ["Ops"]}, id="list"),
        pytest.param({"name": {"text": "Ops"}}, id="object"),
        pytest.param({"name": True}, id="bool"),
        pytest.param({"name": "a\x00b"}, id="nul"),
    ],
)
def test_bad_names_are_400_naming_the_field(listen, data):
    owner = UserFactory()
    room = RoomFactory(slug="lobby", name="Lobby", owner=owner)
    in_room = listen(services.room_group(room.pk))
    response = patch_json(client_for(owner), room_url("lobby"), data)
    assert "name" in assert_json_error(response, 400)["errors"]
    assert Room.objects.get(pk=room.pk).name == "Lobby"
    assert_no_event(in_room)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"name": "Ops",', id="truncated"),
        pytest.param("not json", id="text"),
        pytest.param('["Ops"]', id="array"),
        pytest.param('"Ops"', id="string"),
        pytest.param("", id="empty"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(text):
    owner = UserFactory()
    room = RoomFactory(slug="lobby", name="Lobby", owner=owner)
    response = patch_raw(client_for(owner), room_url("lobby"), text)
    assert_json_error(response, 400)
    assert Room.objects.get(pk=room.pk).name == "Lobby"


def test_a_form_body_is_415():
    owner = UserFactory()
    RoomFactory(slug="lobby", owner=owner)
    response = client_for(owner).generic(
        "PATCH", room_url("lobby"), "name=x", "application/x-www-form-urlencoded"
    )
    assert_json_error(response, 415)


def test_members_who_are_not_the_owner_cannot_rename(listen):
    owner, member = UserFactory(), UserFactory()
    private = private_room(owner, member, slug="ops")
    public = RoomFactory(slug="lobby", name="Lobby", owner=owner)
    channels = [listen(services.room_group(room.pk)) for room in (private, public)]
    for slug in ("ops", "lobby"):
        response = patch_json(client_for(member), room_url(slug), {"name": "Mine"})
        assert assert_json_error(response, 403) == {
            "detail": "Only the room's owner renames it."
        }
    assert [room.name for room in Room.objects.order_by("slug")] == ["Lobby", "Ops"]
    for channel in channels:
        assert_no_event(channel)


def test_an_ownerless_room_is_renamed_by_nobody():
    RoomFactory(slug="lobby", name="Lobby", owner=None)
    response = patch_json(client_for(UserFactory()), room_url("lobby"), {"name": "X"})
    assert_json_error(response, 403)


def test_a_room_the_caller_cannot_see_is_404_like_no_room():
    owner, outsider = UserFactory(), UserFactory()
    private_room(owner, slug="ops")
    client = client_for(outsider)
    hidden = patch_json(client, room_url("ops"), {"name": "Mine"})
    missing = patch_json(client, room_url("nowhere"), {"name": "Mine"})
    assert assert_json_error(hidden, 404) == {"detail": "No such room."}
    assert missing.content == hidden.content
    # A bad body says nothing either: the room is read first.
    assert_json_error(patch_json(client, room_url("ops"), {"name": ""}), 404)
    assert Room.objects.get(slug="ops").name != "Mine"


def test_renaming_needs_a_signed_in_user():
    owner = UserFactory()
    RoomFactory(slug="lobby", owner=owner)
    assert_json_error(patch_json(APIClient(), room_url("lobby"), {"name": "X"}), 401)


def test_the_owner_of_one_room_renames_that_room_only():
    """Ownership is read from the room in the URL, not from any room of the
    caller's: Olive owns ops and is a member of Bob's dev, and vice versa."""
    olive, bob = UserFactory(username="olive"), UserFactory(username="bob")
    private_room(olive, bob, slug="ops")
    private_room(bob, olive, slug="dev")
    as_olive, as_bob = client_for(olive), client_for(bob)
    assert patch_json(as_olive, room_url("ops"), {"name": "O"}).status_code == 200
    assert_json_error(patch_json(as_olive, room_url("dev"), {"name": "X"}), 403)
    assert_json_error(patch_json(as_bob, room_url("ops"), {"name": "X"}), 403)
    assert patch_json(as_bob, room_url("dev"), {"name": "D"}).status_code == 200
    names = dict(Room.objects.values_list("slug", "name"))
    assert names == {"ops": "O", "dev": "D"}


def test_a_room_is_read_by_whoever_may_read_it():
    owner, member, outsider = UserFactory(), UserFactory(), UserFactory()
    private_room(owner, member, slug="ops")
    RoomFactory(slug="lobby", name="Lobby")
    public = APIClient().get(room_url("lobby"))
    assert public.status_code == 200
    assert public.json()["name"] == "Lobby"
    assert set(public.json()) == ROOM_FIELDS
    assert client_for(member).get(room_url("ops")).json()["slug"] == "ops"
    assert_json_error(client_for(outsider).get(room_url("ops")), 404)
    assert_json_error(APIClient().get(room_url("ops")), 404)
    assert_json_error(APIClient().get(room_url("nowhere")), 404)


def test_rename_room_service_refuses_what_the_api_would():
    owner = UserFactory()
    room = RoomFactory(slug="lobby", name="Lobby", owner=owner)
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(services.AccessDenied):
        services.rename_room(room=room, actor=AnonymousUser(), name="X")
    with pytest.raises(ValueError, match="1-100"):
        services.rename_room(room=room, actor=owner, name="   ")
    gone = Room(pk=room.pk + 1000, slug="gone", owner=owner)
    with pytest.raises(Room.DoesNotExist):
        services.rename_room(room=gone, actor=owner, name="X")
    owner.is_active = False  # this copy deactivated: no writes
    assert access.can_rename(owner, room) is False


# --- members ---------------------------------------------------------------------


def test_members_see_the_members_sorted_with_the_owner_marked():
    owner = UserFactory(username="olive")
    users = [UserFactory(username=name) for name in ("mia", "Zed", "bob")]
    private_room(owner, *users, slug="ops")
    response = client_for(users[0]).get(members_url("ops"))
    assert response.status_code == 200
    assert response.json() == [
        {"username": "Zed", "is_owner": False},
        {"username": "bob", "is_owner": False},
        {"username": "mia", "is_owner": False},
        {"username": "olive", "is_owner": True},
    ]
    assert client_for(owner).get(members_url("ops")).json() == response.json()


def test_a_public_room_lists_no_members_to_anyone():
    owner = UserFactory()
    room = RoomFactory(slug="lobby", owner=owner)
    Membership.objects.create(room=room, user=owner)
    for client in (APIClient(), client_for(owner), client_for(UserFactory())):
        response = client.get(members_url("lobby"))
        assert (response.status_code, response.json()) == (200, [])


def test_members_of_a_room_the_caller_cannot_see_are_404_like_no_room():
    owner, outsider, leaver = UserFactory(), UserFactory(), UserFactory()
    private_room(owner, leaver, slug="ops")
    Membership.objects.filter(user=leaver).delete()
    for client in (client_for(outsider), client_for(leaver), APIClient()):
        hidden = client.get(members_url("ops"))
        assert assert_json_error(hidden, 404) == {"detail": "No such room."}
        assert client.get(members_url("nowhere")).content == hidden.content


def test_members_are_listed_for_the_room_in_the_url_only():
    """Two rooms: a member of one sees its list, not the other's."""
    olive, mia, rex = (UserFactory(username=n) for n in ("olive", "mia", "rex"))
    private_room(olive, mia, slug="ops")
    private_room(olive, rex, slug="dev")
    ops = client_for(mia).get(members_url("ops")).json()
    assert [member["username"] for member in ops] == ["mia", "olive"]
    dev = client_for(rex).get(members_url("dev")).json()
    assert [member["username"] for member in dev] == ["olive", "rex"]
    assert_json_error(client_for(mia).get(members_url("dev")), 404)
    assert_json_error(client_for(rex).get(members_url("ops")), 404)


# --- member changes are announced --------------------------------------------------


def test_an_added_member_is_announced_to_the_room_and_to_them_after_commit(
    listen, django_capture_on_commit_callbacks
):
    owner, guest = UserFactory(username="olive"), UserFactory(username="guest")
    room = private_room(owner, slug="ops")
    in_room = listen(services.room_group(room.pk))
    guests = listen(services.user_group(guest.pk))
    owners = listen(services.user_group(owner.pk))

    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(owner).post(
            members_url("ops"), {"username": "guest"}, format="json"
        )
        assert response.status_code == 201
        assert_no_event(in_room)
        assert_no_event(guests)
    for callback in callbacks:
        callback()

    assert event_fields(next_event(in_room)) == {
        "type": "room.changed",
        "slug": "ops",
        "name": room.name,
        "members": ["guest", "olive"],
    }
    assert event_fields(next_event(guests)) == {"type": "rooms.changed"}
    assert_no_event(owners)  # the owner's rooms did not change

    # Adding them again changes nothing and announces nothing.
    with django_capture_on_commit_callbacks(execute=True):
        again = client_for(owner).post(
            members_url("ops"), {"username": "guest"}, format="json"
        )
    assert again.status_code == 201
    assert_no_event(in_room)
    assert_no_event(guests)


def test_a_refused_add_announces_nothing(listen, django_capture_on_commit_callbacks):
    owner, member = UserFactory(), UserFactory()
    UserFactory(username="guest")
    room = private_room(owner, member, slug="ops")
    in_room = listen(services.room_group(room.pk))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client_for(member).post(
            members_url("ops"), {"username": "guest"}, format="json"
        )
    assert_json_error(response, 403)
    assert callbacks == []
    assert_no_event(in_room)


def test_a_full_private_room_admits_nobody_new_and_other_rooms_still_do(
    listen, settings, django_capture_on_commit_callbacks
):
    settings.ROOM_MEMBERS_MAX = 3
    owner, member, *_ = (
        UserFactory(username=name) for name in ("olive", "mia", "rex", "zed")
    )
    room = private_room(owner, member, slug="ops")
    other = private_room(owner, slug="dev")
    in_room = listen(services.room_group(room.pk))
    olive = client_for(owner)

    def add(slug: str, username: str) -> object:
        return olive.post(members_url(slug), {"username": username}, format="json")

    assert add("ops", "rex").status_code == 201  # the third of three
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        full = add("ops", "zed")
    data = assert_json_error(full, 409)
    assert "at most 3 members" in data["detail"]
    assert callbacks == []
    assert_no_event(in_room)
    assert [m["username"] for m in services.members(room)] == ["mia", "olive", "rex"]
    # A member already in is still a 201 (adding is idempotent).
    assert add("ops", "mia").status_code == 201
    # The cap is per room: the owner's other room takes them.
    assert add("dev", "zed").status_code == 201
    assert Membership.objects.filter(room=other).count() == 2
    # A member leaving frees a place.
    assert client_for(member).delete(members_url("ops", "mia")).status_code == 204
    assert add("ops", "zed").status_code == 201
    assert [m["username"] for m in services.members(room)] == ["olive", "rex", "zed"]


def test_a_removed_member_is_announced_after_their_revocation(
    listen, django_capture_on_commit_callbacks
):
    owner, bob = UserFactory(username="olive"), UserFactory(username="bob")
    room = private_room(owner, bob, slug="ops")
    in_room = listen(services.room_group(room.pk))
    bobs = listen(services.user_group(bob.pk))

    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(owner).delete(members_url("ops", "bob"))
        assert response.status_code == 204
        assert_no_event(in_room)
        assert_no_event(bobs)
    for callback in callbacks:
        callback()

    assert event_fields(next_event(in_room)) == {
        "type": "room.changed",
        "slug": "ops",
        "name": room.name,
        "members": ["olive"],
    }
    assert next_event(bobs)["type"] == "access.revoked"
    assert event_fields(next_event(bobs)) == {"type": "rooms.changed"}


def test_a_member_who_leaves_is_announced(listen, django_capture_on_commit_callbacks):
    owner, bob, mia = (UserFactory(username=n) for n in ("olive", "bob", "mia"))
    room = private_room(owner, bob, mia, slug="ops")
    in_room = listen(services.room_group(room.pk))
    bobs = listen(services.user_group(bob.pk))
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(bob).delete(members_url("ops", "bob"))
    assert response.status_code == 204
    assert next_event(in_room)["members"] == ["mia", "olive"]
    assert [next_event(bobs)["type"] for _ in range(2)] == [
        "access.revoked",
        "rooms.changed",
    ]


def test_a_refused_removal_announces_nothing(
    listen, django_capture_on_commit_callbacks
):
    owner, bob, mia = UserFactory(), UserFactory(username="bob"), UserFactory()
    room = private_room(owner, bob, mia, slug="ops")
    in_room = listen(services.room_group(room.pk))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client_for(mia).delete(members_url("ops", "bob"))
    assert_json_error(response, 403)
    assert callbacks == []
    assert_no_event(in_room)


def test_a_rolled_back_change_announces_nothing(listen):
    from django.db import transaction

    owner, guest = UserFactory(), UserFactory(username="guest")
    room = private_room(owner, slug="ops")
    in_room = listen(services.room_group(room.pk))

    class Undo(Exception):
        pass

    def change_then_undo() -> None:
        with transaction.atomic():
            services.add_member(room=room, actor=owner, username="guest")
            services.rename_room(room=room, actor=owner, name="Nope")
            raise Undo

    with pytest.raises(Undo):
        change_then_undo()
    assert_no_event(in_room)
    assert not Membership.objects.filter(user=guest).exists()


def test_a_room_changed_in_the_admin_is_announced(
    listen, django_capture_on_commit_callbacks
):
    owner = UserFactory(username="olive")
    room = private_room(owner, slug="ops")
    in_room = listen(services.room_group(room.pk))
    room.name = "Renamed"
    with django_capture_on_commit_callbacks(execute=True):
        services.save_room(room)
    assert event_fields(next_event(in_room)) == {
        "type": "room.changed",
        "slug": "ops",
        "name": "Renamed",
        "members": ["olive"],
    }
    # A room created is not announced: nobody is connected to it yet.
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.create_room(owner=owner, name="New", slug=None, is_private=False)
    assert callbacks == []


def test_a_failed_announcement_does_not_fail_the_change(
    listen, monkeypatch, django_capture_on_commit_callbacks
):
    owner = UserFactory()
    room = RoomFactory(slug="lobby", owner=owner)

    def broken(room_id: int) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(services, "room_changed_event", broken)
    with django_capture_on_commit_callbacks(execute=True):
        response = patch_json(client_for(owner), room_url("lobby"), {"name": "New"})
    assert response.status_code == 200
    assert Room.objects.get(pk=room.pk).name == "New"


# --- username lookups --------------------------------------------------------------

USERS = "/api/users/"


def test_lookup_finds_active_usernames_by_prefix_whatever_the_case():
    for name in ("alice", "Alfred", "albert", "bob", "al", "xalice"):
        UserFactory(username=name)
    UserFactory(username="alma", is_active=False)
    client = client_for(UserFactory(username="me"))
    expected = [{"username": n} for n in ("Alfred", "al", "albert", "alice")]
    assert client.get(USERS, {"prefix": "al"}).json() == expected
    assert client.get(USERS, {"prefix": "AL"}).json() == expected
    assert client.get(USERS, {"prefix": "alice"}).json() == [{"username": "alice"}]
    assert client.get(USERS, {"prefix": "zz"}).json() == []


def test_lookup_answers_the_first_ten_sorted():
    for number in range(12, 0, -1):
        UserFactory(username=f"user{number:02}")
    response = client_for(UserFactory(username="me")).get(USERS, {"prefix": "user"})
    assert response.status_code == 200
    assert [row["username"] for row in response.json()] == [
        f"user{number:02}" for number in range(1, 11)
    ]


@pytest.mark.parametrize(
    ("prefix", "found"),
    [
        pytest.param("a_", ["a_b"], id="underscore-is-literal"),
        pytest.param("a%", [], id="percent-is-literal"),
        pytest.param("a b", [], id="space"),
        pytest.param("a\x00", [], id="nul"),
        pytest.param("a\\", [], id="backslash"),
    ],
)
def test_lookup_prefix_is_text_not_a_pattern(prefix, found):
    for name in ("a_b", "axb", "a%c"):
        UserFactory(username=name)
    response = client_for(UserFactory(username="me")).get(USERS, {"prefix": prefix})
    assert response.status_code == 200
    assert [row["username"] for row in response.json()] == found


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({}, id="missing"),
        pytest.param({"prefix": ""}, id="empty"),
        pytest.param({"prefix": "a" * 151}, id="too-long"),
    ],
)
def test_lookup_without_a_good_prefix_is_400_and_takes_no_token(settings, query):
    settings.USERS_LOOKUP_BURST = 1
    settings.USERS_LOOKUP_RATE_PER_SECOND = 0.0001
    client = client_for(UserFactory(username="me"))
    data = assert_json_error(client.get(USERS, query), 400)
    assert data["errors"] == {"prefix": ["Give 'prefix': 1-150 characters."]}
    assert client.get(USERS, {"prefix": "m"}).status_code == 200  # the one token


def test_lookup_takes_a_prefix_of_150_characters():
    name = "u" * 150
    UserFactory(username=name)
    response = client_for(UserFactory(username="me")).get(USERS, {"prefix": name})
    assert response.json() == [{"username": name}]


def test_lookup_needs_a_signed_in_user():
    UserFactory(username="alice")
    assert_json_error(APIClient().get(USERS, {"prefix": "al"}), 401)


def test_lookups_beyond_the_burst_are_429_per_user(settings, clock):
    settings.USERS_LOOKUP_BURST = 2
    settings.USERS_LOOKUP_RATE_PER_SECOND = 0.5
    me = client_for(UserFactory(username="me"))
    assert [me.get(USERS, {"prefix": "m"}).status_code for _ in range(2)] == [200] * 2
    refused = me.get(USERS, {"prefix": "m"})
    data = assert_json_error(refused, 429)
    assert refused["Retry-After"] == "2"
    assert data == {
        "detail": "Too many user lookups. Try again in 2 s.",
        "retry_after_ms": 2000,
    }
    other = client_for(UserFactory(username="other"))
    assert other.get(USERS, {"prefix": "m"}).status_code == 200
    clock.advance(2)  # one token back
    assert me.get(USERS, {"prefix": "m"}).status_code == 200
    assert me.get(USERS, {"prefix": "m"}).status_code == 429
