"""core.services: storing, numbering, deduplicating and publishing."""

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from core import services
from core.models import Membership, Message, Room
from tests.factories import RoomFactory, UserFactory, private_room

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Team Chat", "team-chat"),
        ("my_room", "my-room"),
        ("  Ünïcode  ", "unicode"),
        ("a" * 80, "a" * 50),
        ("x -- y", "x-y"),
    ],
)
def test_slugs_made_from_names_follow_the_slug_rule(name, slug):
    assert services.slug_from_name(name) == slug


@pytest.mark.parametrize("name", ["!!!", "___", "日本語"])
def test_a_name_without_a_usable_slug_is_refused(name):
    with pytest.raises(services.InvalidRoomName):
        services.slug_from_name(name)


def test_seq_is_taken_from_the_room_under_its_lock(django_assert_num_queries):
    room = RoomFactory()
    user = UserFactory()
    services.store_message(room=room, author=user, body="one", client_id=None)
    # lock the room, author still active, update last_seq, insert
    with django_assert_num_queries(6):  # + savepoint pair of atomic in tests
        result = services.store_message(
            room=room, author=user, body="two", client_id=None
        )
    assert result.message["seq"] == 2
    room.refresh_from_db()
    assert room.last_seq == 2
    assert room.last_message_at is not None


def test_publishing_waits_for_the_commit(django_capture_on_commit_callbacks):
    """Sync callers (API, announce) publish after the transaction commits."""
    room = RoomFactory(slug="lobby")
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(services.room_group(room.pk), channel)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = services.post_message_sync(room=room, author=None, body="hi")
        # Not committed yet (the test's transaction is open): nothing sent.
        assert layer.channels.get(channel) is None or layer.channels[channel].empty()
    assert len(callbacks) == 1
    event = async_to_sync(layer.receive)(channel)
    assert event == {
        "type": "room.message",
        "message": result.message,
        "group": services.room_group(room.pk),
    }
    assert Message.objects.filter(room=room).count() == 1


def test_a_failed_publish_is_counted_and_the_message_kept(
    monkeypatch, django_capture_on_commit_callbacks
):
    room = RoomFactory(slug="lobby")

    class BrokenLayer:
        async def group_send(self, group, event):
            raise ConnectionError("redis is down")

    monkeypatch.setattr(services, "get_channel_layer", BrokenLayer)
    before = services.publish_stats.failed
    with django_capture_on_commit_callbacks(execute=True):
        result = services.post_message_sync(room=room, author=None, body="kept")
    assert result.created
    assert services.publish_stats.failed == before + 1
    assert Message.objects.get(room=room).body == "kept"


def test_author_name_survives_the_users_deletion():
    room = RoomFactory()
    user = UserFactory(username="leaver")
    services.store_message(room=room, author=user, body="bye", client_id="x")
    user.delete()
    page, _ = services.history(room=room, before=None, after=None, limit=10)
    assert page[0]["author"] == "leaver"


def test_a_client_id_repeats_only_within_its_room():
    """The same author's client_id in another room is a new message there,
    not a repeat of the first room's (PostgreSQL: the integration tier)."""
    first, second = RoomFactory(slug="first"), RoomFactory(slug="second")
    author = UserFactory(username="ada")
    stored = [
        services.store_message(room=room, author=author, body=room.slug, client_id="c1")
        for room in (first, second, first)
    ]
    assert [(r.created, r.message["room"], r.message["seq"]) for r in stored] == [
        (True, "first", 1),
        (True, "second", 1),
        (False, "first", 1),
    ]
    assert Message.objects.get(room=second).body == "second"


def test_a_stale_copy_of_a_room_made_private_does_not_let_a_non_member_post():
    """Callers pass the room they read earlier; its privacy is checked again
    where the message is stored (PostgreSQL: in the integration tier)."""
    room = RoomFactory()
    outsider = UserFactory()
    services.store_message(room=room, author=outsider, body="open", client_id=None)
    Room.objects.filter(pk=room.pk).update(is_private=True)
    assert not room.is_private  # the caller's copy
    with pytest.raises(services.AccessDenied):
        services.store_message(room=room, author=outsider, body="shut", client_id=None)
    assert list(Message.objects.filter(room=room).values_list("body", flat=True)) == [
        "open"
    ]


def test_the_postgresql_statement_names_the_models_tables_and_columns():
    """INSERT_WITH_NEXT_SEQ is plain SQL; a renamed table or column must fail
    here, not in production (the statement runs on PostgreSQL only, in the
    integration tier)."""
    sql = services.INSERT_WITH_NEXT_SEQ
    assert f"UPDATE {Room._meta.db_table} SET" in sql
    for name in ("last_seq", "last_message_at", "id", "is_private"):
        assert Room._meta.get_field(name).column in sql
    columns = [
        Message._meta.get_field(name).column
        for name in (
            "room",
            "seq",
            "author",
            "author_name",
            "body",
            "client_id",
            "sent_at",
        )
    ]
    assert f"INSERT INTO {Message._meta.db_table}\n    ({', '.join(columns)})" in sql
    user_model = get_user_model()
    active = user_model._meta.get_field("is_active").column
    assert (
        f"FROM {user_model._meta.db_table} "
        f"WHERE {user_model._meta.pk.column} = %(author)s AND {active}"
    ) in sql
    room_id, user_id = (
        Membership._meta.get_field(name).column for name in ("room", "user")
    )
    assert (
        f"FROM {Membership._meta.db_table}\n"
        f"            WHERE {room_id} = %(room)s AND {user_id} = %(author)s"
    ) in sql


def test_a_member_removed_since_the_callers_check_cannot_post():
    """The caller's copy of the room still admits the member; the store reads
    the membership again (PostgreSQL: in the statement, integration tier)."""
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    Membership.objects.filter(room=room, user=member).delete()
    with pytest.raises(services.AccessDenied):
        services.store_message(room=room, author=member, body="late", client_id=None)
    assert not Message.objects.filter(room=room).exists()


def test_an_author_deactivated_since_their_copy_was_read_cannot_post():
    """A connection's copy of its user says active; the store asks the
    database."""
    room = RoomFactory()
    author = UserFactory()
    UserFactory(username="still-active")  # someone else is: not enough
    get_user_model().objects.filter(pk=author.pk).update(is_active=False)
    assert author.is_active  # the caller's copy
    with pytest.raises(services.AccessDenied):
        services.store_message(room=room, author=author, body="late", client_id=None)
    assert not Message.objects.filter(room=room).exists()
    assert services.store_message(
        room=room, author=None, body="system", client_id=None
    ).created


def test_an_anonymous_author_is_told_to_sign_in_not_refused():
    """Not signed in (401 on the API) is not the same answer as not allowed
    (403), even where the room is public."""
    from django.contrib.auth.models import AnonymousUser

    room = RoomFactory()
    with pytest.raises(services.NotSignedIn):
        services.store_message(
            room=room, author=AnonymousUser(), body="hi", client_id=None
        )
    assert not Message.objects.filter(room=room).exists()


def test_accounts_and_tokens_are_written_here():
    """The sign-up page and the token API write through these: a new
    account signs in with its password; one token per user, until revoked."""
    from django.contrib.auth import authenticate

    user = services.sign_up(username="ada", password="a-long-passphrase-9")
    assert authenticate(username="ada", password="a-long-passphrase-9") == user
    key = services.issue_token(user)
    assert services.issue_token(user) == key
    services.revoke_tokens(user_id=user.pk)
    assert services.issue_token(user) != key
