"""Read positions and unread counts (core/reads.py, services.mark_read)."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core import reads, services
from core.models import Membership, ReadPosition, Room
from tests.factories import RoomFactory, UserFactory, private_room

pytestmark = pytest.mark.django_db


def post(room, author, body):
    return services.store_message(room=room, author=author, body=body, client_id=None)


def state(user, room):
    return reads.room_state(user, Room.objects.get(pk=room.pk))


@pytest.fixture
def people():
    alice = UserFactory(username="alice")
    bob = UserFactory(username="bob")
    # Joined before anything was posted: everything counts until a read.
    UserFactory._meta.model.objects.filter(pk__in=[alice.pk, bob.pk]).update(
        date_joined=timezone.now() - timedelta(days=1)
    )
    alice.refresh_from_db()
    bob.refresh_from_db()
    return alice, bob


def test_counts_messages_by_others_above_the_read_position(people):
    alice, bob = people
    room = RoomFactory(slug="ops")
    for n in range(3):
        post(room, bob, f"m{n}")
    post(room, alice, "mine")  # own messages never count
    post(room, None, "system")  # a system message does
    assert state(alice, room) == reads.ReadState("ops", 0, 4, 0)
    services.store_read(user=alice, room=room, seq=2)
    assert state(alice, room) == reads.ReadState("ops", 2, 2, 0)


def test_edits_and_deletions_are_not_messages_and_deleted_ones_do_not_count(people):
    alice, bob = people
    room = RoomFactory(slug="ops")
    first = post(room, bob, "one").message["seq"]
    second = post(room, bob, "two").message["seq"]
    services.store_change(room=room, actor=bob, seq=first, body="one!", client_id=None)
    services.store_change(room=room, actor=bob, seq=second, body=None, client_id=None)
    assert state(alice, room).unread == 1  # "one!", once


def test_mentions_count_unread_messages_that_name_the_user(people):
    alice, bob = people
    room = RoomFactory(slug="ops")
    post(room, bob, "@alice look")
    post(room, bob, "hey @ALICE.")
    post(room, bob, "mail alice@example.com")
    post(room, bob, "@alicex is someone else")
    post(room, alice, "@alice talking to myself")
    assert state(alice, room) == reads.ReadState("ops", 0, 4, 2)
    services.store_read(user=alice, room=room, seq=1)
    assert state(alice, room).mentions == 1


def test_counts_stop_at_the_cap(people, monkeypatch):
    alice, bob = people
    room = RoomFactory(slug="ops")
    for n in range(5):
        post(room, bob, f"@alice {n}")
    monkeypatch.setattr(reads, "COUNT_CAP", 3)
    assert state(alice, room) == reads.ReadState("ops", 0, 3, 3)


def test_only_the_newest_events_are_counted(people, monkeypatch):
    alice, bob = people
    room = RoomFactory(slug="ops")
    for n in range(6):
        post(room, bob, f"m{n}")
    monkeypatch.setattr(reads, "COUNT_WINDOW", 4)
    assert state(alice, room).unread == 4


def test_with_no_read_position_only_what_came_after_joining_counts():
    room = RoomFactory(slug="ops")
    bob = UserFactory(username="bob")
    post(room, bob, "before carol")
    post(room, bob, "@carol before carol")
    carol = UserFactory(username="carol")  # joins now: date_joined
    secret = private_room(bob, slug="secret")
    post(secret, bob, "before carol was added")
    Membership.objects.create(room=secret, user=carol)
    post(secret, bob, "@carol welcome")
    post(room, bob, "@carol hi")
    assert state(carol, room) == reads.ReadState("ops", 0, 1, 1)
    assert state(carol, secret) == reads.ReadState("secret", 0, 1, 1)
    # A read position, once there, is the only rule.
    services.store_read(user=carol, room=room, seq=0)
    assert state(carol, room) == reads.ReadState("ops", 0, 3, 2)


def test_mark_read_moves_forward_only_and_is_clamped(people):
    alice, bob = people
    room = RoomFactory(slug="ops")
    for n in range(4):
        post(room, bob, f"m{n}")
    assert services.store_read(user=alice, room=room, seq=3).moved
    result = services.store_read(user=alice, room=room, seq=1)
    assert not result.moved
    assert result.state == reads.ReadState("ops", 3, 1, 0)
    result = services.store_read(user=alice, room=room, seq=10**12)
    assert result.moved
    assert result.state == reads.ReadState("ops", 4, 0, 0)
    assert ReadPosition.objects.get(user=alice, room=room).seq == 4


def test_mark_read_needs_a_reader(people):
    alice, bob = people
    secret = private_room(bob, slug="secret")
    with pytest.raises(services.AccessDenied):
        services.store_read(user=alice, room=secret, seq=0)
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(services.NotSignedIn):
        services.store_read(user=AnonymousUser(), room=secret, seq=0)


def test_every_visible_room_is_counted_in_two_queries_at_most(people):
    alice, bob = people
    ops, dev = RoomFactory(slug="ops"), RoomFactory(slug="dev")
    secret = private_room(bob, alice, slug="secret")
    private_room(bob, slug="hidden")
    post(ops, bob, "a")
    post(ops, bob, "@alice b")
    post(dev, bob, "c")
    post(secret, bob, "d")
    services.store_read(user=alice, room=dev, seq=1)
    with CaptureQueriesContext(connection) as queries:
        rooms, more = reads.watched_rooms(alice, 10)
    # The counts, then the bodies that may mention alice (ops has one).
    assert len(queries) == 2
    assert not more
    assert [(r["slug"], r["unread"], r["mentions"], r["read_seq"]) for r in rooms] == [
        ("dev", 0, 0, 1),
        ("ops", 2, 1, 0),
        ("secret", 1, 0, 0),
    ]
    assert rooms[1] == {
        "slug": "ops",
        "name": ops.name,
        "is_private": False,
        "last_seq": 2,
        "read_seq": 0,
        "unread": 2,
        "mentions": 1,
    }
    assert secret.pk in reads.watched_ids(alice, 10)
    rooms, more = reads.watched_rooms(alice, 2)
    assert [r["slug"] for r in rooms] == ["dev", "ops"]
    assert more


def test_without_candidates_for_mentions_one_query_counts_every_room(people):
    alice, bob = people
    for slug in ("ops", "dev"):
        post(RoomFactory(slug=slug), bob, "no names here")
    with CaptureQueriesContext(connection) as queries:
        rooms, _ = reads.watched_rooms(alice, 10)
    assert len(queries) == 1
    assert [r["unread"] for r in rooms] == [1, 1]


def test_a_body_that_only_looks_like_a_mention_is_not_one(people):
    alice, bob = people
    room = RoomFactory(slug="ops")
    post(room, bob, "é@alice and x@alice")  # "@alice" inside, no mention
    post(room, bob, "«@alice»")
    assert state(alice, room) == reads.ReadState("ops", 0, 2, 1)
