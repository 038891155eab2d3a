"""core.admin: staff edits follow the API's rules and have the same effects.

Each test signs in as a superuser and uses the admin's pages as a browser
would (Django's test client), then checks what a user would: the API's
answer, a WebSocket closed with 4403, a form error, a 403. Socket tests run
real transactions (``transaction=True``), so the events go out on commit
as in production.
"""

import pytest
from channels.db import database_sync_to_async
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core import services
from core.models import Membership, Message, Room
from tests.factories import PASSWORD, RoomFactory, UserFactory, private_room
from tests.unit.conftest import connected, receive_until, refused, send_json, token_for

SOCKET_TESTS = pytest.mark.django_db(transaction=True)


def staff() -> Client:
    """A browser signed in to the admin as a superuser."""
    client = Client()
    client.force_login(
        get_user_model().objects.create_superuser("staff", password=PASSWORD)
    )
    return client


def url(model: str, view: str, *args: object) -> str:
    return reverse(f"admin:core_{model}_{view}", args=args)


def form_errors(response: object) -> dict:
    """The admin form's errors on a page it sent back (not saved)."""
    assert response.status_code == 200, response.status_code
    return response.context["adminform"].form.errors


def api_client(user: object) -> APIClient:
    client = APIClient()
    key = Token.objects.get_or_create(user=user)[0].key
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def messages_url(slug: str) -> str:
    return f"/api/rooms/{slug}/messages/"


async def closed_with_4403(communicator: object) -> None:
    """Read what ``communicator`` is sent until it closes, with 4403."""
    while True:
        output = await communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            assert output.get("code") == 4403, output
            return


async def still_open(communicator: object) -> None:
    await send_json(communicator, {"type": "ping"})
    assert (await receive_until(communicator, lambda f: f["type"] == "pong"))[0]


# --- rooms ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_room_added_in_the_admin_gets_a_slug_and_its_owner_as_first_member():
    owner = UserFactory()

    response = staff().post(
        url("room", "add"),
        {"name": "Design Reviews", "slug": "", "is_private": "on", "owner": owner.pk},
    )

    assert response.status_code == 302
    room = Room.objects.get(slug="design-reviews")
    assert room.is_private
    assert list(room.members.all()) == [owner]
    assert api_client(owner).get(messages_url(room.slug)).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "Ops", "slug": "Not A Slug"}, "slug"),
        ({"name": "Ops", "slug": "-ops"}, "slug"),
        ({"name": "Ops", "slug": "x" * 51}, "slug"),
        ({"name": "x" * 101, "slug": "ops"}, "name"),
        ({"name": "", "slug": "ops"}, "name"),
        ({"name": "!!!", "slug": ""}, "slug"),
        ({"name": "Lobby", "slug": "lobby"}, "slug"),  # taken
        ({"name": "Ops", "slug": "ops", "owner": "inactive"}, "owner"),
    ],
    ids=[
        "bad-slug",
        "slug-with-leading-hyphen",
        "slug-too-long",
        "name-too-long",
        "no-name",
        "no-slug-from-name",
        "slug-taken",
        "inactive-owner",
    ],
)
def test_the_admin_refuses_a_room_the_api_refuses(data, field):
    RoomFactory(slug="lobby")
    if data.get("owner") == "inactive":
        data = {**data, "owner": UserFactory(is_active=False).pk}

    errors = form_errors(staff().post(url("room", "add"), data))

    assert list(errors) == [field]
    assert list(Room.objects.values_list("slug", flat=True)) == ["lobby"]


@pytest.mark.django_db
def test_a_slug_taken_between_the_forms_check_and_its_save_is_a_form_error(
    monkeypatch,
):
    """Another request creates the room after this form checked the slug:
    the form comes back with the error beside the slug, not a 500."""
    from core.admin import RoomAdminForm

    RoomFactory(slug="ops", name="The first Ops")
    checks = []
    check = RoomAdminForm.validate_unique

    def checked_before_the_other_request(form):
        checks.append(form)
        if len(checks) > 1:  # the form again, after the race
            check(form)

    monkeypatch.setattr(
        RoomAdminForm, "validate_unique", checked_before_the_other_request
    )

    response = staff().post(url("room", "add"), {"name": "Ops", "slug": "ops"})

    assert list(form_errors(response)) == ["slug"]
    assert len(checks) == 2
    assert list(Room.objects.values_list("name", flat=True)) == ["The first Ops"]


@pytest.mark.django_db
def test_a_rooms_slug_and_last_seq_stay_as_they_are_when_staff_edit_it():
    room = RoomFactory(slug="lobby", name="Lobby")
    services.store_message(room=room, author=None, body="hi", client_id=None)

    response = staff().post(
        url("room", "change", room.pk),
        {"slug": "moved", "last_seq": "99", "name": "The Lobby", "owner": ""},
    )

    assert response.status_code == 302
    room.refresh_from_db()
    assert (room.slug, room.last_seq, room.name) == ("lobby", 1, "The Lobby")


@pytest.mark.django_db
def test_a_new_owner_set_in_the_admin_becomes_a_member():
    old_owner, new_owner = UserFactory(), UserFactory()
    room = private_room(old_owner)

    response = staff().post(
        url("room", "change", room.pk),
        {"name": room.name, "is_private": "on", "owner": new_owner.pk},
    )

    assert response.status_code == 302
    assert set(room.members.all()) == {old_owner, new_owner}
    assert api_client(new_owner).get(messages_url(room.slug)).status_code == 200


@SOCKET_TESTS
async def test_a_room_made_private_in_the_admin_closes_non_members_sockets(alice, bob):
    await database_sync_to_async(services.create_room)(
        owner=alice, name="Ops", slug="ops", is_private=False
    )
    room = await database_sync_to_async(Room.objects.get)(slug="ops")
    client = await database_sync_to_async(staff)()
    async with (
        connected("ops", token=await token_for(alice)) as owner_ws,
        connected("ops", token=await token_for(bob)) as outsider_ws,
        connected("ops") as anonymous_ws,
    ):
        response = await database_sync_to_async(client.post)(
            url("room", "change", room.pk),
            {"name": "Ops", "is_private": "on", "owner": alice.pk},
        )
        assert response.status_code == 302

        await closed_with_4403(outsider_ws)
        await closed_with_4403(anonymous_ws)
        await still_open(owner_ws)
    await refused("ops", token=await token_for(bob))


@SOCKET_TESTS
async def test_a_room_deleted_in_the_admin_closes_its_sockets_and_takes_its_messages(
    alice, lobby
):
    def add_messages() -> None:
        for number in range(3):
            services.store_message(
                room=lobby, author=alice, body=f"m{number}", client_id=None
            )

    await database_sync_to_async(add_messages)()
    client = await database_sync_to_async(staff)()
    async with connected("lobby", token=await token_for(alice)) as ws:
        page = await database_sync_to_async(client.get)(url("room", "delete", lobby.pk))
        assert page.status_code == 200
        assert dict(page.context["model_count"]) == {"rooms": 1, "messages": 3}

        response = await database_sync_to_async(client.post)(
            url("room", "delete", lobby.pk), {"post": "yes"}
        )
        assert response.status_code == 302

        await closed_with_4403(ws)
    assert not await database_sync_to_async(Message.objects.exists)()


# --- memberships ----------------------------------------------------------------


@pytest.mark.django_db
def test_a_member_added_in_the_admin_reads_the_private_room():
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner)
    assert api_client(member).get(messages_url(room.slug)).status_code == 404

    response = staff().post(
        url("membership", "add"), {"room": room.pk, "user": member.pk}
    )

    assert response.status_code == 302
    assert api_client(member).get(messages_url(room.slug)).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("case", "field"),
    [("public-room", "room"), ("inactive-user", "user"), ("member-already", None)],
)
def test_the_admin_adds_no_member_the_api_would_refuse(case, field):
    owner, user = UserFactory(), UserFactory(is_active=case != "inactive-user")
    room = RoomFactory(owner=owner) if case == "public-room" else private_room(owner)
    if case == "member-already":
        Membership.objects.create(room=room, user=user)
    before = Membership.objects.count()

    errors = form_errors(
        staff().post(url("membership", "add"), {"room": room.pk, "user": user.pk})
    )

    assert list(errors) == [field or "__all__"]
    assert Membership.objects.count() == before


@SOCKET_TESTS
async def test_a_membership_deleted_in_the_admin_closes_that_members_socket_with_4403(
    alice, bob
):
    room = await database_sync_to_async(private_room)(alice, bob, slug="secret")
    membership = await database_sync_to_async(Membership.objects.get)(
        room=room, user=bob
    )
    client = await database_sync_to_async(staff)()
    bob_token = await token_for(bob)
    async with (
        connected("secret", token=bob_token) as bob_ws,
        connected("secret", token=await token_for(alice)) as alice_ws,
    ):
        response = await database_sync_to_async(client.post)(
            url("membership", "delete", membership.pk), {"post": "yes"}
        )
        assert response.status_code == 302

        await closed_with_4403(bob_ws)
        await still_open(alice_ws)
    await refused("secret", token=bob_token)


@SOCKET_TESTS
async def test_members_removed_by_the_admins_bulk_delete_have_their_sockets_closed(
    alice, bob
):
    carol = await database_sync_to_async(UserFactory)(username="carol")
    room = await database_sync_to_async(private_room)(alice, bob, carol)
    selected = await database_sync_to_async(
        lambda: list(
            Membership.objects.filter(room=room)
            .exclude(user=alice)
            .values_list("pk", flat=True)
        )
    )()
    client = await database_sync_to_async(staff)()
    async with (
        connected("secret", token=await token_for(bob)) as bob_ws,
        connected("secret", token=await token_for(carol)) as carol_ws,
    ):
        response = await database_sync_to_async(client.post)(
            url("membership", "changelist"),
            {"action": "delete_selected", "_selected_action": selected, "post": "yes"},
        )
        assert response.status_code == 302

        await closed_with_4403(bob_ws)
        await closed_with_4403(carol_ws)
    members = await database_sync_to_async(lambda: list(room.members.all()))()
    assert members == [alice]


@pytest.mark.django_db
@pytest.mark.parametrize("case", ["owner-of-private-room", "public-room"])
def test_the_admin_keeps_memberships_the_api_would_keep(case):
    """An owner cannot leave their room; a public room has no one to remove."""
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    kept = Membership.objects.get(room=room, user=owner)
    if case == "public-room":
        Room.objects.filter(pk=room.pk).update(is_private=False)
        kept = Membership.objects.get(room=room, user=member)
    client = staff()

    page = client.get(url("membership", "delete", kept.pk))
    single = client.post(url("membership", "delete", kept.pk), {"post": "yes"})
    bulk = client.post(
        url("membership", "changelist"),
        {"action": "delete_selected", "_selected_action": [kept.pk], "post": "yes"},
    )

    assert page.context["perms_lacking"]
    assert (single.status_code, bulk.status_code) == (403, 403)
    assert Membership.objects.filter(pk=kept.pk).exists()


@pytest.mark.django_db
def test_the_admin_adds_no_member_to_a_full_room(settings):
    settings.ROOM_MEMBERS_MAX = 2
    owner, member, extra = UserFactory(), UserFactory(), UserFactory()
    full, roomy = private_room(owner, member, slug="full"), private_room(owner)
    admin = staff()

    errors = form_errors(
        admin.post(url("membership", "add"), {"room": full.pk, "user": extra.pk})
    )
    assert errors == {
        "room": ["This room is full: a private room holds at most 2 members."]
    }
    assert Membership.objects.filter(room=full).count() == 2

    added = admin.post(url("membership", "add"), {"room": roomy.pk, "user": extra.pk})
    assert added.status_code == 302
    assert Membership.objects.filter(room=roomy, user=extra).exists()


@pytest.mark.django_db
def test_a_room_owner_can_still_be_deleted_in_the_admin():
    """The owner's membership goes with their account, whatever its rule."""
    owner = UserFactory()
    room = private_room(owner, UserFactory())

    response = staff().post(
        reverse("admin:auth_user_delete", args=[owner.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not Membership.objects.filter(room=room, user_id=owner.pk).exists()


@pytest.mark.django_db
def test_a_membership_cannot_be_changed_in_the_admin():
    owner, member, other = UserFactory(), UserFactory(), UserFactory()
    room = private_room(owner, member)
    membership = Membership.objects.get(room=room, user=member)

    response = staff().post(
        url("membership", "change", membership.pk), {"room": room.pk, "user": other.pk}
    )

    assert response.status_code == 403
    assert Membership.objects.get(pk=membership.pk).user == member


# --- messages -------------------------------------------------------------------


@pytest.fixture
def message() -> Message:
    room = RoomFactory(slug="lobby")
    author = UserFactory(username="alice")
    services.store_message(room=room, author=author, body="original", client_id=None)
    return Message.objects.get(room=room, seq=1)


@pytest.mark.django_db
def test_staff_find_messages_by_room_and_author_and_read_their_body(message):
    other_room = RoomFactory(slug="elsewhere")
    services.store_message(room=other_room, author=None, body="other", client_id=None)
    client = staff()

    for query in ("lobby", "alice", "lobby alice"):
        found = client.get(url("message", "changelist"), {"q": query})
        assert list(found.context["cl"].result_list) == [message], query
    detail = client.get(url("message", "change", message.pk))

    assert detail.status_code == 200
    assert "original" in detail.content.decode()


@pytest.mark.django_db
def test_messages_cannot_be_added_changed_or_deleted_in_the_admin(message):
    client = staff()
    change = {"body": "edited", "seq": "7"}

    responses = {
        "add": client.post(url("message", "add"), change),
        "change": client.post(url("message", "change", message.pk), change),
        "delete-page": client.get(url("message", "delete", message.pk)),
        "delete": client.post(url("message", "delete", message.pk), {"post": "yes"}),
    }
    bulk = client.post(
        url("message", "changelist"),
        {"action": "delete_selected", "_selected_action": [message.pk], "post": "yes"},
    )

    assert {name: r.status_code for name, r in responses.items()} == {
        "add": 403,
        "change": 403,
        "delete-page": 403,
        "delete": 403,
    }
    assert "delete_selected" not in bulk.content.decode()  # no such action
    assert list(Message.objects.values_list("seq", "body")) == [(1, "original")]


@pytest.mark.django_db
def test_staff_see_who_deleted_what_and_never_the_body(message):
    room, alice = message.room, message.author
    owner = UserFactory(username="owner")
    Room.objects.filter(pk=room.pk).update(owner=owner)
    room.refresh_from_db()
    services.store_change(room=room, actor=alice, seq=1, body="edited", client_id=None)
    services.store_message(room=room, author=alice, body="kept", client_id=None)
    services.store_change(room=room, actor=owner, seq=1, body=None, client_id=None)
    client = staff()

    listed = client.get(url("deletion", "changelist"))
    (deletion,) = listed.context["cl"].result_list
    assert (deletion.seq, deletion.target_seq, deletion.author_name) == (4, 1, "owner")
    page = listed.content.decode()
    assert "#1" in page
    assert "owner" in page
    states = client.get(url("message", "changelist")).context["cl"].result_list
    admin_view = admin.site._registry[Message]
    assert [admin_view.state(row) for row in states] == [
        "deletion of #1",
        "message",
        "edit of #1",
        "deleted",
    ]
    detail = client.get(url("deletion", "change", deletion.pk)).content.decode()
    assert "original" not in detail
    assert "edited" not in detail
    assert (
        client.post(url("deletion", "delete", deletion.pk), {"post": "yes"}).status_code
        == 403
    )
    assert Message.objects.filter(kind="delete").count() == 1


# --- API tokens -----------------------------------------------------------------


def token_url(view: str, user: object) -> str:
    """Tokens are addressed by their user's id, never by the key."""
    return reverse(f"admin:core_apitoken_{view}", args=[user.pk])


@pytest.mark.django_db
def test_the_admin_lists_and_deletes_tokens_without_ever_showing_a_key():
    user = UserFactory(username="alice")
    key = Token.objects.create(user=user).key
    client = staff()

    pages = [
        client.get(reverse("admin:core_apitoken_changelist")),
        client.get(token_url("change", user)),
        client.get(token_url("history", user)),
        client.get(token_url("delete", user)),
        client.post(token_url("delete", user), {"post": "yes"}, follow=True),
        client.get(reverse("admin:index")),  # recent actions
    ]

    assert [page.status_code for page in pages] == [200] * len(pages)
    assert "alice" in pages[0].content.decode()
    assert not [page for page in pages if key in page.content.decode()]
    assert not LogEntry.objects.filter(object_repr__contains=key).exists()
    assert not Token.objects.filter(user=user).exists()


@pytest.mark.django_db
def test_tokens_cannot_be_added_or_changed_in_the_admin():
    user = UserFactory()
    Token.objects.create(user=user)
    other = UserFactory()
    client = staff()

    add = client.post(reverse("admin:core_apitoken_add"), {"user": other.pk})
    change = client.post(token_url("change", user), {"user": other.pk})

    assert (add.status_code, change.status_code) == (403, 403)
    assert list(Token.objects.values_list("user", flat=True)) == [user.pk]


@SOCKET_TESTS
async def test_a_token_deleted_in_the_admin_is_refused_by_the_api_and_closes_its_socket(
    alice, lobby
):
    key = await token_for(alice)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert (await database_sync_to_async(api.get)("/api/rooms/")).status_code == 200
    client = await database_sync_to_async(staff)()
    async with connected("lobby", token=key) as ws:
        response = await database_sync_to_async(client.post)(
            token_url("delete", alice), {"post": "yes"}
        )
        assert response.status_code == 302

        await closed_with_4403(ws)
    assert (await database_sync_to_async(api.get)("/api/rooms/")).status_code == 401
    await refused("lobby", token=key)


@pytest.mark.django_db
def test_every_admin_page_of_core_opens_for_staff():
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    services.store_message(room=room, author=member, body="hello", client_id=None)
    Token.objects.create(user=member)
    client = staff()
    pages = [
        reverse("admin:index"),
        url("room", "changelist"),
        url("room", "add"),
        url("room", "change", room.pk),
        url("membership", "changelist"),
        url("membership", "add"),
        url("membership", "change", Membership.objects.get(user=member).pk),
        url("message", "changelist"),
        url("message", "change", Message.objects.get().pk),
        url("deletion", "changelist"),
        url("apitoken", "changelist"),
        url("apitoken", "change", member.pk),
    ]

    assert {page: client.get(page).status_code for page in pages} == dict.fromkeys(
        pages, 200
    )
