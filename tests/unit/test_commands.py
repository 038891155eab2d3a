"""The management commands ``announce``, ``ensure_room`` and ``ensure_user``."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from core import services
from core.models import Message, Room
from tests.factories import RoomFactory
from tests.unit.conftest import next_event

pytestmark = pytest.mark.django_db

User = get_user_model()


def announce(*args: str) -> str:
    out = StringIO()
    call_command("announce", *args, stdout=out)
    return out.getvalue()


def ensure_room(*args: str) -> str:
    out = StringIO()
    call_command("ensure_room", *args, stdout=out)
    return out.getvalue()


# --- announce ------------------------------------------------------------------


def test_announce_posts_a_system_message_and_publishes_it(
    listen, django_capture_on_commit_callbacks
):
    room = RoomFactory(slug="lobby")
    channel = listen(services.room_group(room.pk))

    # The test's transaction stands in for the command's autocommit.
    with django_capture_on_commit_callbacks(execute=True):
        output = announce("lobby", "  Maintenance at 22:00 UTC\n")

    message = Message.objects.get()
    assert message.author is None
    assert message.author_name == ""
    assert message.body == "  Maintenance at 22:00 UTC\n"
    assert message.seq == 1
    event = next_event(channel)
    assert event["type"] == "room.message"
    assert event["message"] | {"sent_at": None} == {
        "type": "message",
        "room": "lobby",
        "seq": 1,
        "author": None,
        "body": "  Maintenance at 22:00 UTC\n",
        "sent_at": None,
        "client_id": None,
    }
    assert "seq 1" in output


def test_announce_takes_the_next_seq():
    room = RoomFactory(slug="lobby")
    services.store_message(room=room, author=None, body="a", client_id=None)
    announce("lobby", "b")
    room.refresh_from_db()
    assert room.last_seq == 2
    assert list(Message.objects.values_list("seq", "body")) == [(1, "a"), (2, "b")]


def test_announce_to_an_unknown_room_fails_and_stores_nothing():
    with pytest.raises(CommandError, match="no-such-room"):
        announce("no-such-room", "hello")
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   \n\t", id="blank"),
        pytest.param("x" * 4001, id="too-long"),
        pytest.param("a\x00b", id="nul"),
    ],
)
def test_announce_refuses_invalid_text_and_stores_nothing(text):
    RoomFactory(slug="lobby")
    with pytest.raises(CommandError):
        announce("lobby", text)
    assert not Message.objects.exists()


def test_announce_reaches_private_rooms():
    """A system message needs no membership."""
    RoomFactory(slug="staff", is_private=True)
    announce("staff", "hello staff")
    assert Message.objects.get().body == "hello staff"


# --- ensure_room -------------------------------------------------------------------


def test_ensure_room_creates_a_public_room_once():
    first = ensure_room("lobby", "--name", "The Lobby")
    second = ensure_room("lobby", "--name", "Another Name")

    room = Room.objects.get()
    assert (room.slug, room.name, room.is_private) == ("lobby", "The Lobby", False)
    assert "created" in first
    assert "exists" in second


def test_ensure_room_names_the_room_after_its_slug_by_default():
    ensure_room("general")
    assert Room.objects.get().name == "general"


def test_ensure_room_leaves_an_existing_room_alone():
    RoomFactory(slug="lobby", name="Kept", is_private=True)
    ensure_room("lobby")
    room = Room.objects.get()
    assert (room.name, room.is_private) == ("Kept", True)


@pytest.mark.parametrize(
    "slug", ["Lobby", "-lobby", "lob by", "a" * 51, "lobby\n", "lobby/x", ""]
)
def test_ensure_room_rejects_a_bad_slug(slug):
    with pytest.raises(CommandError, match="Invalid slug"):
        ensure_room("--", slug)  # "--": "-lobby" is a slug, not an option
    assert not Room.objects.exists()


def test_ensure_room_refuses_a_name_over_100_characters():
    with pytest.raises(CommandError, match="100"):
        ensure_room("lobby", "--name", "x" * 101)
    assert not Room.objects.exists()
    ensure_room("lobby", "--name", "x" * 100)
    assert Room.objects.get().name == "x" * 100


# --- ensure_user -------------------------------------------------------------------


def ensure_user(*args: str) -> str:
    out = StringIO()
    call_command("ensure_user", *args, stdout=out)
    return out.getvalue()


def test_ensure_user_creates_accounts_once_with_the_password_from_the_environment(
    monkeypatch,
):
    monkeypatch.setenv("ENSURE_USER_PASSWORD", "s3cret-pass")
    first = ensure_user("alice", "bob")
    monkeypatch.setenv("ENSURE_USER_PASSWORD", "another-pass")
    second = ensure_user("alice")

    alice, bob = User.objects.order_by("username")
    assert alice.check_password("s3cret-pass")  # kept, not reset
    assert bob.check_password("s3cret-pass")
    assert not alice.is_staff
    assert first.splitlines() == ["User alice created.", "User bob created."]
    assert second.splitlines() == ["User alice exists."]


def test_ensure_user_staff_raises_an_existing_user_and_never_lowers(monkeypatch):
    monkeypatch.setenv("ENSURE_USER_PASSWORD", "s3cret-pass")
    ensure_user("alice")
    ensure_user("alice", "--staff")
    assert User.objects.get().is_staff
    ensure_user("alice")
    assert User.objects.get().is_staff


def test_ensure_user_needs_a_password(monkeypatch):
    monkeypatch.delenv("ENSURE_USER_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="ENSURE_USER_PASSWORD"):
        ensure_user("alice")
    assert not User.objects.exists()


@pytest.mark.parametrize("username", ["al ice", "a" * 151, "alice/", ""])
def test_ensure_user_rejects_a_bad_username_and_creates_nobody(monkeypatch, username):
    monkeypatch.setenv("ENSURE_USER_PASSWORD", "s3cret-pass")
    with pytest.raises(CommandError, match="Invalid username"):
        ensure_user("bob", "--", username)
    assert not User.objects.exists()
