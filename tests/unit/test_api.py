"""The HTTP API of docs/protocol.md section 15, through real requests.

Requests carry real tokens (``Authorization: Token``), so authentication runs
as it does for scripts. Channel-layer events are read from the process's
in-memory layer by a test channel added to the group a consumer would join,
and round-tripped through JSON as Redis would serialize them.
"""

import json
import re

import pytest
from channels.db import database_sync_to_async
from django.utils.dateparse import parse_datetime
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core import services
from core.models import Membership, Message, Room
from tests.factories import PASSWORD, RoomFactory, UserFactory, private_room
from tests.unit.conftest import (
    connected,
    next_event,
    receive_until,
    send_json,
    token_for,
)

pytestmark = pytest.mark.django_db

ROOM_FIELDS = {"slug", "name", "is_private", "last_seq", "last_message_at"}
MESSAGE_FIELDS = {"type", "room", "seq", "author", "body", "sent_at", "client_id"}
SENT_AT_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def client_for(user: object) -> APIClient:
    """An API client that signs in with the user's token."""
    client = APIClient()
    key = Token.objects.get_or_create(user=user)[0].key
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def post_json(client: APIClient, url: str, data: object) -> object:
    return client.post(url, data, format="json")


def post_raw(client: APIClient, url: str, text: str) -> object:
    """POST ``text`` as the body, exactly as written (JSON escapes kept)."""
    return client.generic("POST", url, text, content_type="application/json")


def messages_url(slug: str) -> str:
    return f"/api/rooms/{slug}/messages/"


def store(room: Room, count: int, author: object = None) -> None:
    for number in range(1, count + 1):
        services.store_message(
            room=room, author=author, body=f"m{number}", client_id=None
        )


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """PBKDF2's million rounds are for attackers, not for this suite."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def fields(event: dict, *names: str) -> dict:
    """The event's documented fields (routing extras such as its group aside)."""
    return {name: event.get(name) for name in names}


def assert_no_event(channel: str) -> None:
    with pytest.raises(TimeoutError):
        next_event(channel, timeout=0.1)


def assert_json_error(response: object, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    data = response.json()
    assert data["detail"]
    return data


# --- tokens -------------------------------------------------------------------


def test_token_is_issued_for_good_credentials():
    user = UserFactory(username="ada")
    response = post_json(
        APIClient(), "/api/auth/token/", {"username": "ada", "password": PASSWORD}
    )
    assert response.status_code == 200
    key = Token.objects.get(user=user).key
    assert response.json() == {"token": key}

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert post_json(client, "/api/rooms/", {"name": "Mine"}).status_code == 201


def test_token_request_twice_returns_the_same_token():
    UserFactory(username="ada")
    credentials = {"username": "ada", "password": PASSWORD}
    first = post_json(APIClient(), "/api/auth/token/", credentials).json()
    second = post_json(APIClient(), "/api/auth/token/", credentials).json()
    assert first == second


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"username": "ada", "password": "wrong"}, id="wrong-password"),
        pytest.param({"username": "nobody", "password": PASSWORD}, id="unknown-user"),
    ],
)
def test_token_is_refused_for_bad_credentials(credentials):
    UserFactory(username="ada")
    response = post_json(APIClient(), "/api/auth/token/", credentials)
    assert_json_error(response, 400)
    assert not Token.objects.exists()


def test_token_is_refused_for_an_inactive_user():
    UserFactory(username="ada", is_active=False)
    response = post_json(
        APIClient(), "/api/auth/token/", {"username": "ada", "password": PASSWORD}
    )
    assert_json_error(response, 400)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="empty"),
        pytest.param({"username": "ada"}, id="no-password"),
        pytest.param({"password": PASSWORD}, id="no-username"),
        pytest.param({"username": ["ada"], "password": PASSWORD}, id="list-username"),
        pytest.param({"username": "ada", "password": None}, id="null-password"),
        pytest.param({"username": "ada", "password": {"a": 1}}, id="object-password"),
        pytest.param({"username": True, "password": PASSWORD}, id="bool-username"),
        pytest.param(["ada", PASSWORD], id="list-body"),
        pytest.param("ada", id="string-body"),
    ],
)
def test_token_request_with_missing_or_mistyped_fields_is_400(data):
    UserFactory(username="ada")
    response = post_json(APIClient(), "/api/auth/token/", data)
    assert_json_error(response, 400)
    assert not Token.objects.exists()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("username=ada&password=x", id="form-text"),
        pytest.param('{"username": "ada",', id="truncated"),
        pytest.param('{"username": NaN}', id="nan"),
        pytest.param("", id="empty"),
    ],
)
def test_token_request_that_is_not_json_is_400(text):
    response = post_raw(APIClient(), "/api/auth/token/", text)
    assert_json_error(response, 400)


@pytest.mark.parametrize(
    "url",
    [
        "/api/auth/token/",
        "/api/rooms/",
        "/api/rooms/lobby/members/",
        "/api/rooms/lobby/messages/",
    ],
)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="arrays"),
        pytest.param('{"body": ' + '{"a": ' * 5000 + "1" + "}" * 5001, id="objects"),
    ],
)
def test_json_nested_too_deep_is_400_on_every_endpoint(url, text):
    owner = UserFactory()
    private_room(owner, slug="lobby")
    response = post_raw(client_for(owner), url, text)
    assert_json_error(response, 400)


def json_of_size(size: int) -> str:
    """A JSON object of exactly ``size`` bytes."""
    text = '{"name": "x", "pad": ""}'
    return text[:-2] + "a" * (size - len(text)) + '"}'


@pytest.mark.parametrize(
    "url",
    [
        "/api/auth/token/",
        "/api/rooms/",
        "/api/rooms/lobby/members/",
        "/api/rooms/lobby/messages/",
    ],
)
def test_body_over_the_upload_limit_is_a_json_413_on_every_endpoint(settings, url):
    """Over DATA_UPLOAD_MAX_MEMORY_SIZE: 413 with ``detail``, not Django's
    HTML 400; a body of exactly the limit is read as usual."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    owner = UserFactory()
    private_room(owner, slug="lobby")
    too_big = post_raw(client_for(owner), url, json_of_size(1025))
    at_limit = post_raw(client_for(owner), url, json_of_size(1024))

    assert assert_json_error(too_big, 413) == {
        "detail": "The request body is over 1024 bytes."
    }
    assert at_limit.status_code != 413
    assert at_limit["Content-Type"].startswith("application/json")


def test_body_over_the_upload_limit_is_413_with_session_auth_too(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    client = APIClient()
    client.force_login(UserFactory())
    response = post_raw(client, "/api/rooms/", json_of_size(2048))
    assert_json_error(response, 413)
    assert not Room.objects.exists()


@pytest.mark.parametrize(
    "url", ["/api/nothing/", "/api/rooms/not%20a%20slug/messages/"]
)
def test_api_url_no_route_matches_is_a_json_404(url):
    """Django's HTML page elsewhere; JSON like every API error here."""
    response = APIClient().get(url)
    assert assert_json_error(response, 404) == {"detail": "Not found."}


def test_token_request_as_a_form_is_refused_as_unsupported_media_type():
    response = APIClient().post(
        "/api/auth/token/", {"username": "ada", "password": PASSWORD}
    )
    assert_json_error(response, 415)


def test_revoked_token_is_refused_afterwards():
    user = UserFactory()
    client = client_for(user)
    assert post_json(client, "/api/rooms/", {"name": "Before"}).status_code == 201

    assert client.delete("/api/auth/token/").status_code == 204

    assert not Token.objects.filter(user=user).exists()
    assert_json_error(post_json(client, "/api/rooms/", {"name": "After"}), 401)
    assert_json_error(client.delete("/api/auth/token/"), 401)


def test_revoking_a_token_closes_the_sockets_it_signed_in(
    listen, django_capture_on_commit_callbacks
):
    user = UserFactory()
    key = Token.objects.create(user=user).key
    channel = listen(services.user_group(user.pk))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")

    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete("/api/auth/token/").status_code == 204

    assert fields(next_event(channel), "type", "room", "credential") == {
        "type": "access.revoked",
        "room": None,
        "credential": services.credential_id(key),
    }


def test_revoking_without_signing_in_is_401():
    assert_json_error(APIClient().delete("/api/auth/token/"), 401)


# --- rooms ----------------------------------------------------------------------


def test_anonymous_room_list_shows_public_rooms_only():
    owner = UserFactory()
    RoomFactory(slug="lobby")
    private_room(owner, slug="secret")
    response = APIClient().get("/api/rooms/")
    assert response.status_code == 200
    assert [room["slug"] for room in response.json()] == ["lobby"]


def test_room_list_has_exactly_the_documented_fields():
    room = RoomFactory(slug="lobby", name="The Lobby")
    store(room, 2)
    [listed] = APIClient().get("/api/rooms/").json()
    assert set(listed) == ROOM_FIELDS
    assert listed["slug"] == "lobby"
    assert listed["name"] == "The Lobby"
    assert listed["is_private"] is False
    assert listed["last_seq"] == 2
    room.refresh_from_db()
    assert parse_datetime(listed["last_message_at"]) == room.last_message_at


def test_member_sees_their_private_rooms_and_others_do_not():
    owner, member, outsider = UserFactory.create_batch(3)
    RoomFactory(slug="lobby")
    private_room(owner, member, slug="secret")
    private_room(outsider, slug="elsewhere")

    listed = client_for(member).get("/api/rooms/").json()
    assert [room["slug"] for room in listed] == ["lobby", "secret"]
    listed = client_for(outsider).get("/api/rooms/").json()
    assert [room["slug"] for room in listed] == ["elsewhere", "lobby"]


def test_room_list_is_one_query_however_many_rooms(django_assert_num_queries):
    RoomFactory.create_batch(5)
    with django_assert_num_queries(1):
        response = APIClient().get("/api/rooms/")
    assert len(response.json()) == 5


def room_page(client: APIClient, query: str = "") -> tuple[list[str], str | None]:
    """Slugs of one page of GET /api/rooms/ and the URL of the next page."""
    response = client.get(f"/api/rooms/{query}")
    assert response.status_code == 200, response.content
    link = response.get("Link")
    next_url = None
    if link is not None:
        match = re.fullmatch(
            r'<(http://testserver/api/rooms/\?[^>]*)>; rel="next"', link
        )
        assert match, link
        next_url = match.group(1)
    return [room["slug"] for room in response.json()], next_url


def test_room_list_is_one_page_of_100_by_default_with_a_link_to_the_next():
    RoomFactory.create_batch(101)
    slugs, next_url = room_page(APIClient())
    everything = sorted(Room.objects.values_list("slug", flat=True))
    assert slugs == everything[:100]
    assert next_url == f"http://testserver/api/rooms/?after={slugs[-1]}&limit=100"
    rest, last = room_page(
        APIClient(), next_url.removeprefix("http://testserver/api/rooms/")
    )
    assert (rest, last) == (everything[100:], None)


def test_room_list_pages_follow_the_link_to_the_end_without_repeats():
    owner, member = UserFactory.create_batch(2)
    for number in range(7):
        RoomFactory(slug=f"r{number}")
    private_room(owner, member, slug="r3-private")
    private_room(owner, slug="r5-hidden")
    client = client_for(member)
    seen: list[list[str]] = []
    query = "?limit=3"
    while query is not None and len(seen) < 5:
        slugs, next_url = room_page(client, query)
        seen.append(slugs)
        query = next_url and next_url.removeprefix("http://testserver/api/rooms/")
    assert seen == [["r0", "r1", "r2"], ["r3", "r3-private", "r4"], ["r5", "r6"]]


def test_room_list_page_that_ends_exactly_has_no_next_link():
    RoomFactory.create_batch(3)
    slugs, next_url = room_page(APIClient(), "?limit=3")
    assert len(slugs) == 3
    assert next_url is None


def test_room_list_accepts_500_and_stays_one_query(django_assert_num_queries):
    """One query, which fetches no more than the page and one more row."""
    RoomFactory.create_batch(3)
    with django_assert_num_queries(1) as captured:
        slugs, _ = room_page(APIClient(), "?limit=500&after=")
    assert len(slugs) == 3
    assert captured.captured_queries[0]["sql"].endswith("LIMIT 501")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        pytest.param("?limit=0", "limit", id="limit-0"),
        pytest.param("?limit=501", "limit", id="limit-501"),
        pytest.param("?limit=-1", "limit", id="limit-negative"),
        pytest.param("?limit=ten", "limit", id="limit-word"),
        pytest.param("?after=Not%20A%20Slug", "after", id="after-not-a-slug"),
    ],
)
def test_bad_room_list_paging_is_400_naming_the_field(query, field):
    response = APIClient().get(f"/api/rooms/{query}")
    assert field in assert_json_error(response, 400)["errors"]


def test_creating_a_room_needs_a_signed_in_user():
    response = post_json(APIClient(), "/api/rooms/", {"name": "Nope"})
    assert_json_error(response, 401)
    assert not Room.objects.exists()


def test_created_room_slug_is_derived_from_the_name():
    owner = UserFactory()
    response = post_json(client_for(owner), "/api/rooms/", {"name": "Tea & Biscuits!"})
    assert response.status_code == 201, response.content
    assert response.json() == {
        "slug": "tea-biscuits",
        "name": "Tea & Biscuits!",
        "is_private": False,
        "last_seq": 0,
        "last_message_at": None,
    }


def test_created_room_keeps_an_explicit_slug_and_privacy():
    owner = UserFactory()
    response = post_json(
        client_for(owner),
        "/api/rooms/",
        {"name": "Plans", "slug": "q3-plans", "is_private": True},
    )
    assert response.status_code == 201
    room = Room.objects.get(slug="q3-plans")
    assert (room.name, room.is_private, room.owner) == ("Plans", True, owner)


def test_room_owner_is_its_first_member():
    owner = UserFactory()
    post_json(client_for(owner), "/api/rooms/", {"name": "Mine", "is_private": True})
    room = Room.objects.get(slug="mine")
    assert list(
        Membership.objects.filter(room=room).values_list("user", flat=True)
    ) == [owner.pk]
    assert [r["slug"] for r in client_for(owner).get("/api/rooms/").json()] == ["mine"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"name": "Anything", "slug": "taken"}, id="explicit"),
        pytest.param({"name": "Taken"}, id="derived"),
    ],
)
def test_a_taken_slug_is_400(data):
    RoomFactory(slug="taken")
    response = post_json(client_for(UserFactory()), "/api/rooms/", data)
    assert "slug" in assert_json_error(response, 400)["errors"]
    assert Room.objects.count() == 1


def test_a_slug_taken_by_a_hidden_private_room_answers_as_any_taken_slug():
    """Slugs are one namespace, so "not available" cannot be hidden; the
    answer says nothing more: not whose, not public or private."""
    owner, prober = UserFactory.create_batch(2)
    RoomFactory(slug="public-one")
    private_room(owner, slug="secret-one")
    client = client_for(prober)

    public = post_json(client, "/api/rooms/", {"name": "P", "slug": "public-one"})
    hidden = post_json(client, "/api/rooms/", {"name": "P", "slug": "secret-one"})

    assert (public.status_code, hidden.status_code) == (400, 400)
    assert hidden.json() == {
        "detail": "Invalid input.",
        "errors": {"slug": ["The slug secret-one is taken."]},
    }
    assert public.json()["errors"]["slug"] == ["The slug public-one is taken."]
    assert set(hidden.headers) == set(public.headers)
    assert Room.objects.count() == 2


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({}, "name", id="no-name"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"name": "   "}, "name", id="name-blank"),
        pytest.param({"name": "x" * 101}, "name", id="name-101"),
        pytest.param({"name": None}, "name", id="name-null"),
        pytest.param({"name": ["a"]}, "name", id="name-list"),
        pytest.param({"name": 5}, "name", id="name-number"),
        pytest.param({"name": "Ok", "slug": "Bad Slug"}, "slug", id="slug-space"),
        pytest.param({"name": "Ok", "slug": "UPPER"}, "slug", id="slug-upper"),
        pytest.param({"name": "Ok", "slug": "-dash"}, "slug", id="slug-leading-dash"),
        pytest.param({"name": "Ok", "slug": "a" * 51}, "slug", id="slug-51"),
        pytest.param({"name": "Ok", "slug": 42}, "slug", id="slug-number"),
        pytest.param({"name": "!!!"}, "slug", id="no-slug-from-name"),
        pytest.param({"name": "Ok", "is_private": "yes"}, "is_private", id="priv-str"),
        pytest.param({"name": "Ok", "is_private": 1}, "is_private", id="priv-1"),
        pytest.param({"name": "Ok", "is_private": None}, "is_private", id="priv-null"),
    ],
)
def test_invalid_room_is_400_naming_the_field(data, field):
    response = post_json(client_for(UserFactory()), "/api/rooms/", data)
    assert field in assert_json_error(response, 400)["errors"]
    assert not Room.objects.exists()


def test_room_name_of_100_characters_is_accepted():
    response = post_json(client_for(UserFactory()), "/api/rooms/", {"name": "x" * 100})
    assert response.status_code == 201
    assert response.json()["name"] == "x" * 100


# --- members --------------------------------------------------------------------


def members_url(slug: str, username: str | None = None) -> str:
    url = f"/api/rooms/{slug}/members/"
    return f"{url}{username}/" if username else url


def test_owner_adds_a_member_who_then_sees_the_room():
    owner, guest = UserFactory(), UserFactory(username="guest")
    room = private_room(owner)
    response = post_json(
        client_for(owner), members_url(room.slug), {"username": "guest"}
    )
    assert response.status_code == 201
    assert response.json() == {"username": "guest"}
    assert Membership.objects.filter(room=room, user=guest).exists()
    assert client_for(guest).get(messages_url(room.slug)).status_code == 200


def test_adding_a_member_twice_keeps_one_membership():
    owner, guest = UserFactory(), UserFactory(username="guest")
    room = private_room(owner, guest)
    response = post_json(
        client_for(owner), members_url(room.slug), {"username": "guest"}
    )
    assert response.status_code == 201
    assert Membership.objects.filter(room=room, user=guest).count() == 1


def test_member_who_is_not_the_owner_cannot_add_members():
    owner, member = UserFactory(), UserFactory()
    UserFactory(username="guest")
    room = private_room(owner, member)
    response = post_json(
        client_for(member), members_url(room.slug), {"username": "guest"}
    )
    assert_json_error(response, 403)
    assert not Membership.objects.filter(room=room, user__username="guest").exists()


def test_public_room_has_no_members_to_add():
    room = RoomFactory(owner=UserFactory())
    UserFactory(username="guest")
    response = post_json(
        client_for(room.owner), members_url(room.slug), {"username": "guest"}
    )
    assert_json_error(response, 403)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"username": "nobody"}, id="unknown"),
        pytest.param({"username": "sleeper"}, id="inactive"),
        pytest.param({}, id="missing"),
        pytest.param({"username": ["guest"]}, id="list"),
    ],
)
def test_adding_an_unknown_or_invalid_user_is_400(data):
    owner = UserFactory()
    UserFactory(username="sleeper", is_active=False)
    room = private_room(owner)
    response = post_json(client_for(owner), members_url(room.slug), data)
    assert "username" in assert_json_error(response, 400)["errors"]
    assert Membership.objects.filter(room=room).count() == 1


def test_non_member_gets_404_for_a_private_rooms_members():
    owner, outsider = UserFactory(), UserFactory(username="outsider")
    room = private_room(owner)
    client = client_for(outsider)
    response = post_json(client, members_url(room.slug), {"username": "outsider"})
    assert_json_error(response, 404)
    assert_json_error(client.delete(members_url(room.slug, owner.username)), 404)
    assert_json_error(
        post_json(client, members_url("no-such-room"), {"username": "x"}), 404
    )


def test_managing_members_needs_a_signed_in_user():
    owner = UserFactory()
    room = private_room(owner)
    response = post_json(APIClient(), members_url(room.slug), {"username": "x"})
    assert_json_error(response, 401)


def test_owner_removes_a_member_and_their_sockets_are_told_after_commit(
    listen, django_capture_on_commit_callbacks
):
    owner, member = UserFactory(), UserFactory(username="member")
    room = private_room(owner, member)
    channel = listen(services.user_group(member.pk))

    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(owner).delete(members_url(room.slug, "member"))
        assert response.status_code == 204
        assert_no_event(channel)  # nothing is published before the commit
    # The revocation, then the announcement (tests/unit/test_room_api.py).
    assert len(callbacks) == 2

    callbacks[0]()
    assert fields(next_event(channel), "type", "room", "credential") == {
        "type": "access.revoked",
        "room": room.slug,
        "credential": None,
    }
    assert not Membership.objects.filter(room=room, user=member).exists()
    assert_json_error(client_for(member).get(messages_url(room.slug)), 404)


def test_member_leaves_a_room(listen, django_capture_on_commit_callbacks):
    owner, member = UserFactory(), UserFactory(username="member")
    room = private_room(owner, member)
    channel = listen(services.user_group(member.pk))
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(member).delete(members_url(room.slug, "member"))
    assert response.status_code == 204
    assert not Membership.objects.filter(room=room, user=member).exists()
    assert next_event(channel)["type"] == "access.revoked"


def test_owner_cannot_leave_their_room():
    owner = UserFactory()
    room = private_room(owner)
    response = client_for(owner).delete(members_url(room.slug, owner.username))
    assert_json_error(response, 403)
    assert Membership.objects.filter(room=room, user=owner).exists()


def test_member_cannot_remove_another_member():
    owner, member, other = UserFactory(), UserFactory(), UserFactory(username="other")
    room = private_room(owner, member, other)
    response = client_for(member).delete(members_url(room.slug, "other"))
    assert_json_error(response, 403)
    assert Membership.objects.filter(room=room, user=other).exists()


def test_removing_someone_who_is_not_a_member_is_404():
    owner = UserFactory()
    UserFactory(username="stranger")
    room = private_room(owner)
    response = client_for(owner).delete(members_url(room.slug, "stranger"))
    assert_json_error(response, 404)


# --- messages: reading ------------------------------------------------------------


def page(client: APIClient, slug: str, query: str = "") -> tuple[list[int], bool]:
    response = client.get(messages_url(slug) + (f"?{query}" if query else ""))
    assert response.status_code == 200, response.content
    data = response.json()
    return [message["seq"] for message in data["messages"]], data["has_more"]


@pytest.mark.parametrize(
    ("query", "seqs", "has_more"),
    [
        pytest.param("", [1, 2, 3, 4, 5, 6, 7], False, id="default-limit"),
        pytest.param("limit=3", [5, 6, 7], True, id="latest"),
        pytest.param("limit=7", [1, 2, 3, 4, 5, 6, 7], False, id="latest-all"),
        pytest.param("after=2&limit=3", [3, 4, 5], True, id="after-first-page"),
        pytest.param("after=4&limit=3", [5, 6, 7], False, id="after-last-page"),
        pytest.param("after=7", [], False, id="after-end"),
        pytest.param("after=0&limit=1", [1], True, id="after-zero"),
        pytest.param("before=6&limit=3", [3, 4, 5], True, id="before-last-page"),
        pytest.param("before=4&limit=3", [1, 2, 3], False, id="before-first-page"),
        pytest.param("before=1", [], False, id="before-start"),
        pytest.param("after=1&before=7&limit=3", [2, 3, 4], True, id="between-more"),
        pytest.param("after=3&before=6&limit=3", [4, 5], False, id="between-all"),
        pytest.param("after=3&before=4", [], False, id="between-none"),
        pytest.param("after=9223372036854775807", [], False, id="after-max"),
        pytest.param("before=9223372036854775807&limit=2", [6, 7], True, id="bmax"),
        pytest.param("after=&before=&limit=", [1, 2, 3, 4, 5, 6, 7], False, id="empty"),
    ],
)
def test_message_pages_follow_the_history_rules(query, seqs, has_more):
    room = RoomFactory()
    store(room, 7)
    assert page(APIClient(), room.slug, query) == (seqs, has_more)


def test_message_page_defaults_to_the_latest_50():
    room = RoomFactory()
    store(room, 51)
    seqs, has_more = page(APIClient(), room.slug)
    assert (seqs[0], seqs[-1], len(seqs), has_more) == (2, 51, 50, True)
    seqs, has_more = page(APIClient(), room.slug, "limit=100")
    assert (len(seqs), has_more) == (51, False)


def test_message_page_has_the_frame_shape():
    author = UserFactory(username="ada")
    room = RoomFactory(slug="lobby")
    services.store_message(room=room, author=author, body="hi", client_id="c1")
    services.store_message(room=room, author=None, body="sys", client_id=None)
    messages = APIClient().get(messages_url("lobby")).json()["messages"]
    assert [set(message) for message in messages] == [MESSAGE_FIELDS] * 2
    first, second = messages
    assert first | {"sent_at": None} == {
        "type": "message",
        "room": "lobby",
        "seq": 1,
        "author": "ada",
        "body": "hi",
        "sent_at": None,
        "client_id": "c1",
    }
    assert SENT_AT_RE.fullmatch(first["sent_at"])
    assert (second["author"], second["client_id"]) == (None, None)


def test_reading_messages_is_two_queries_however_many(django_assert_num_queries):
    room = RoomFactory()
    store(room, 20, author=UserFactory())
    with django_assert_num_queries(2):  # the room, then the page
        seqs, _ = page(APIClient(), room.slug)
    assert len(seqs) == 20


@pytest.mark.parametrize("name", ["after", "before", "limit"])
@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "1.5",
        "abc",
        "true",
        "1e3",
        " 1",
        "0x10",
        "\uff11",  # FULLWIDTH DIGIT ONE
        "99999999999999999999",
        "9223372036854775808",
    ],
)
def test_malformed_paging_parameter_is_400_json(name, value):
    room = RoomFactory()
    response = APIClient().get(messages_url(room.slug), {name: value})
    assert name in assert_json_error(response, 400)["errors"]


@pytest.mark.parametrize("value", ["0", "101"])
def test_limit_outside_1_to_100_is_400(value):
    room = RoomFactory()
    response = APIClient().get(messages_url(room.slug), {"limit": value})
    assert "limit" in assert_json_error(response, 400)["errors"]


def test_anonymous_reads_public_rooms_but_not_private_ones():
    owner = UserFactory()
    public = RoomFactory()
    secret = private_room(owner)
    store(public, 1)
    store(secret, 1)
    client = APIClient()
    assert page(client, public.slug) == ([1], False)
    assert_json_error(client.get(messages_url(secret.slug)), 404)
    assert_json_error(client.get(messages_url("no-such-room")), 404)


def test_member_reads_a_private_room_and_a_non_member_gets_404():
    owner, member, outsider = UserFactory.create_batch(3)
    room = private_room(owner, member)
    store(room, 2)
    assert page(client_for(member), room.slug) == ([1, 2], False)
    assert_json_error(client_for(outsider).get(messages_url(room.slug)), 404)


# --- messages: posting ------------------------------------------------------------


def test_posted_message_is_201_with_the_frame_and_published(
    listen, django_capture_on_commit_callbacks
):
    author = UserFactory(username="ada")
    room = RoomFactory(slug="lobby")
    channel = listen(services.room_group(room.pk))
    with django_capture_on_commit_callbacks(execute=True):
        response = post_json(
            client_for(author),
            messages_url("lobby"),
            {"body": "hello", "client_id": "c-1"},
        )
    assert response.status_code == 201
    frame = response.json()
    assert set(frame) == MESSAGE_FIELDS
    assert frame | {"sent_at": None} == {
        "type": "message",
        "room": "lobby",
        "seq": 1,
        "author": "ada",
        "body": "hello",
        "sent_at": None,
        "client_id": "c-1",
    }
    assert SENT_AT_RE.fullmatch(frame["sent_at"])
    assert fields(next_event(channel), "type", "message") == {
        "type": "room.message",
        "message": frame,
    }
    room.refresh_from_db()
    assert room.last_seq == 1


def test_posted_message_without_client_id_has_null_client_id():
    room = RoomFactory()
    response = post_json(
        client_for(UserFactory()), messages_url(room.slug), {"body": "x"}
    )
    assert response.status_code == 201
    assert response.json()["client_id"] is None


def test_repeated_client_id_returns_the_original_and_stores_nothing(listen):
    room = RoomFactory()
    client = client_for(UserFactory())
    first = post_json(
        client, messages_url(room.slug), {"body": "one", "client_id": "k"}
    )
    channel = listen(services.room_group(room.pk))

    again = post_json(
        client, messages_url(room.slug), {"body": "two", "client_id": "k"}
    )

    assert again.status_code == 200
    assert again.json() == first.json()
    assert list(Message.objects.values_list("body", flat=True)) == ["one"]
    assert_no_event(channel)


def test_same_client_id_from_another_user_is_a_new_message():
    room = RoomFactory()
    for user in UserFactory.create_batch(2):
        response = post_json(
            client_for(user), messages_url(room.slug), {"body": "x", "client_id": "k"}
        )
        assert response.status_code == 201
    assert Message.objects.count() == 2


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("  hello  ", id="spaces"),
        pytest.param("\n\nhello\n", id="newlines"),
        pytest.param("\thello\r\n", id="tab-crlf"),
        pytest.param("😀" * 4000, id="4000-non-bmp"),
        pytest.param("x" * 4000, id="4000-ascii"),
        pytest.param("e\u0301" * 2000, id="4000-combining"),
    ],
)
def test_message_body_is_stored_verbatim(body):
    room = RoomFactory()
    response = post_json(
        client_for(UserFactory()), messages_url(room.slug), {"body": body}
    )
    assert response.status_code == 201, response.content
    assert response.json()["body"] == body
    assert Message.objects.get().body == body


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"body": ""}, id="empty"),
        pytest.param({"body": "   "}, id="spaces"),
        pytest.param({"body": " \n\t\r\n "}, id="whitespace"),
        pytest.param({"body": "\u3000\u2003"}, id="unicode-spaces"),
        pytest.param({"body": "x" * 4001}, id="4001"),
        pytest.param({"body": "😀" * 4001}, id="4001-non-bmp"),
        pytest.param({"body": "a\x00b"}, id="nul"),
        pytest.param({"body": 42}, id="number"),
        pytest.param({"body": True}, id="bool"),
        pytest.param({"body": None}, id="null"),
        pytest.param({"body": ["hi"]}, id="list"),
        pytest.param({"body": {"text": "hi"}}, id="object"),
        pytest.param({}, id="missing"),
        pytest.param({"body": "hi", "client_id": ""}, id="client-id-empty"),
        pytest.param({"body": "hi", "client_id": "a b"}, id="client-id-space"),
        pytest.param({"body": "hi", "client_id": "x" * 65}, id="client-id-65"),
        pytest.param({"body": "hi", "client_id": 7}, id="client-id-number"),
    ],
)
def test_invalid_message_is_400_and_not_stored(data):
    room = RoomFactory()
    response = post_json(client_for(UserFactory()), messages_url(room.slug), data)
    field = "client_id" if "client_id" in data else "body"
    assert field in assert_json_error(response, 400)["errors"]
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"body": "\\ud800"}', id="lone-high"),
        pytest.param('{"body": "a\\udc00b"}', id="lone-low"),
        pytest.param('{"body": "\\u0000"}', id="escaped-nul"),
    ],
)
def test_body_with_a_json_escaped_lone_surrogate_or_nul_is_400(text):
    room = RoomFactory()
    response = post_raw(client_for(UserFactory()), messages_url(room.slug), text)
    assert "body" in assert_json_error(response, 400)["errors"]
    assert not Message.objects.exists()


def test_escaped_surrogate_pair_is_one_code_point():
    room = RoomFactory()
    text = '{"body": "' + "\\ud83d\\ude00" * 4000 + '"}'
    response = post_raw(client_for(UserFactory()), messages_url(room.slug), text)
    assert response.status_code == 201
    assert Message.objects.get().body == "😀" * 4000


def test_anonymous_post_is_401_and_not_stored():
    room = RoomFactory()
    response = post_json(APIClient(), messages_url(room.slug), {"body": "hi"})
    assert_json_error(response, 401)
    assert not Message.objects.exists()


def test_non_member_post_to_a_private_room_is_404():
    owner, outsider = UserFactory(), UserFactory()
    room = private_room(owner)
    response = post_json(client_for(outsider), messages_url(room.slug), {"body": "x"})
    assert_json_error(response, 404)
    assert_json_error(
        post_json(APIClient(), messages_url(room.slug), {"body": "x"}), 404
    )
    assert not Message.objects.exists()


def test_member_posts_to_a_private_room():
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    response = post_json(client_for(member), messages_url(room.slug), {"body": "x"})
    assert response.status_code == 201


def test_posts_beyond_the_burst_are_429_with_retry_after(settings):
    settings.SEND_BURST = 3
    settings.SEND_RATE_PER_SECOND = 0.1  # a 30 s window: no refill mid-test
    room = RoomFactory()
    client = client_for(UserFactory())
    for number in range(3):
        response = post_json(client, messages_url(room.slug), {"body": f"m{number}"})
        assert response.status_code == 201

    response = post_json(client, messages_url(room.slug), {"body": "one too many"})

    assert_json_error(response, 429)
    assert 1 <= int(response["Retry-After"]) <= 30
    assert Message.objects.count() == 3
    other = post_json(client_for(UserFactory()), messages_url(room.slug), {"body": "y"})
    assert other.status_code == 201, "the limit is per user"


def test_reading_is_not_throttled_by_posting(settings):
    settings.SEND_BURST = 1
    settings.SEND_RATE_PER_SECOND = 0.1
    room = RoomFactory()
    client = client_for(UserFactory())
    post_json(client, messages_url(room.slug), {"body": "x"})
    assert post_json(client, messages_url(room.slug), {"body": "y"}).status_code == 429
    assert client.get(messages_url(room.slug)).status_code == 200


@pytest.mark.parametrize(
    ("behind_proxy", "second_status"),
    [pytest.param(False, 429, id="direct"), pytest.param(True, 401, id="proxied")],
)
def test_anonymous_throttle_trusts_the_platforms_header_only_behind_the_proxy(
    settings, behind_proxy, second_status
):
    """Without DJANGO_HTTPS the socket address counts, not a client's header;
    behind the proxy, DO-Connecting-IP names the client."""
    settings.SEND_BURST = 1
    settings.SEND_RATE_PER_SECOND = 0.1
    settings.HTTPS = behind_proxy
    room = RoomFactory()
    statuses = [
        APIClient()
        .post(
            messages_url(room.slug),
            {"body": "x"},
            format="json",
            HTTP_DO_CONNECTING_IP=address,
        )
        .status_code
        for address in ("203.0.113.1", "203.0.113.2")
    ]
    assert statuses == [401, second_status]


def test_anonymous_throttle_never_trusts_x_forwarded_for(settings):
    """Its leftmost entries are the client's to write, even behind the proxy."""
    settings.SEND_BURST = 1
    settings.SEND_RATE_PER_SECOND = 0.1
    settings.HTTPS = True
    room = RoomFactory()
    statuses = [
        APIClient()
        .post(
            messages_url(room.slug),
            {"body": "x"},
            format="json",
            HTTP_X_FORWARDED_FOR=f"{address}, 10.0.0.1",
        )
        .status_code
        for address in ("203.0.113.1", "203.0.113.2")
    ]
    assert statuses == [401, 429]


# --- schema -----------------------------------------------------------------------


def test_schema_is_an_openapi_3_document_of_the_api():
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/auth/token/",
        "/api/rooms/",
        "/api/rooms/{slug}/",
        "/api/rooms/{slug}/members/",
        "/api/rooms/{slug}/members/{username}/",
        "/api/users/",
        "/api/rooms/{slug}/messages/",
        "/api/rooms/{slug}/typing/",
        "/api/rooms/{slug}/messages/{seq}/",
        "/api/rooms/{slug}/deletions/",
        "/api/search/",
        "/api/rooms/{slug}/read/",
    }
    messages = schema["paths"]["/api/rooms/{slug}/messages/"]
    assert {"get", "post"} <= set(messages)
    assert {"patch", "delete"} <= set(
        schema["paths"]["/api/rooms/{slug}/messages/{seq}/"]
    )
    parameters = {parameter["name"] for parameter in messages["get"]["parameters"]}
    assert {"after", "before", "limit"} <= parameters


# --- the WebSocket and the API store the same text -------------------------------

TRICKY_BODIES = [
    pytest.param("  leading and trailing  ", id="spaces"),
    pytest.param("\ttabbed\t", id="tabs"),
    pytest.param("\nline one\nline two\n\n", id="newlines"),
    pytest.param("crlf\r\nend\r", id="carriage-returns"),
    pytest.param("שלום, עולם!", id="rtl-hebrew"),
    pytest.param("\u202emixed مرحبا abc\u202c", id="rtl-override"),
    pytest.param("😀👍🏽👨‍👩‍👧", id="emoji-zwj"),
    pytest.param("e\u0301 n\u0303 \u0061\u030a", id="combining-marks"),
    pytest.param("\u2028para\u2029sep\u00a0nbsp\ufeff", id="unicode-separators"),
    pytest.param('quotes " and \\ backslash </script>', id="json-escapes"),
]


async def send_raw_utf8(socket: object, body: str, *, client_id: str) -> None:
    """A ``send`` frame encoded as a browser would (raw UTF-8, not escaped)."""
    frame = {"type": "send", "body": body, "client_id": client_id}
    await socket.send_to(text_data=json.dumps(frame, ensure_ascii=False))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("body", TRICKY_BODIES)
async def test_websocket_and_api_store_the_same_text(body, async_client):
    user = await database_sync_to_async(UserFactory)(username="ada")
    room = await database_sync_to_async(RoomFactory)(slug="lobby")
    token = await token_for(user)

    async with connected(room.slug, token=token) as socket:
        await send_raw_utf8(socket, body, client_id="via-ws")
        # The ack and the echo may come in either order.
        first = await socket.receive_json_from(timeout=5)
        second = await socket.receive_json_from(timeout=5)
        by_type = {first["type"]: first, second["type"]: second}
        assert by_type["ack"] == {"type": "ack", "client_id": "via-ws", "seq": 1}
        echo = by_type["message"]

        response = await async_client.post(
            messages_url(room.slug),
            json.dumps({"body": body, "client_id": "via-api"}, ensure_ascii=False),
            content_type="application/json",
            headers={"Authorization": f"Token {token}"},
        )
        assert response.status_code == 201, response.content
        live, _ = await receive_until(socket, lambda f: f["type"] == "message")

    stored = await database_sync_to_async(
        lambda: dict(Message.objects.values_list("client_id", "body"))
    )()
    assert stored == {"via-ws": body, "via-api": body}
    assert echo["body"] == live["body"] == response.json()["body"] == body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "query",
    [
        {},
        {"limit": 3},
        {"after": 2, "limit": 3},
        {"after": 5, "limit": 3},
        {"before": 6, "limit": 3},
        {"before": 3},
        {"after": 1, "before": 7, "limit": 3},
        {"after": 3, "before": 6},
    ],
    ids=lambda query: "&".join(f"{k}={v}" for k, v in query.items()) or "none",
)
async def test_api_pages_equal_websocket_history(query, async_client):
    room = await database_sync_to_async(RoomFactory)()
    await database_sync_to_async(store)(room, 7)

    response = await async_client.get(messages_url(room.slug), query)
    async with connected(room.slug) as socket:
        await send_json(socket, {"type": "history", **query})
        frame, _ = await receive_until(socket, lambda f: f["type"] == "history")

    assert response.status_code == 200
    assert response.json() == {
        "messages": frame["messages"],
        "has_more": frame["has_more"],
    }
