"""GET and PUT /api/rooms/<slug>/read/ (docs/protocol.md, section 18)."""

import json

import pytest
from rest_framework.test import APIClient

from core import limits, services
from tests.factories import RoomFactory, UserFactory, private_room
from tests.unit.conftest import next_event
from tests.unit.test_api import client_for

pytestmark = pytest.mark.django_db(transaction=True)


def url(slug: str) -> str:
    return f"/api/rooms/{slug}/read/"


def put(client: APIClient, slug: str, body: object):
    return client.put(url(slug), json.dumps(body), content_type="application/json")


@pytest.fixture
def ops():
    room = RoomFactory(slug="ops")
    bob = UserFactory(username="bob")
    for n in range(3):
        services.store_message(room=room, author=bob, body=f"m{n}", client_id=None)
    return room


def test_put_moves_the_position_and_get_reads_it(ops):
    alice = UserFactory(username="alice")
    client = client_for(alice)
    response = put(client, "ops", {"seq": 2})
    assert response.status_code == 200
    assert response.json() == {"room": "ops", "read_seq": 2, "unread": 1, "mentions": 0}
    # Never back; clamped to the room's last seq.
    assert put(client, "ops", {"seq": 1}).json()["read_seq"] == 2
    assert put(client, "ops", {"seq": 99}).json()["read_seq"] == 3
    assert client.get(url("ops")).json() == {
        "room": "ops",
        "read_seq": 3,
        "unread": 0,
        "mentions": 0,
    }


@pytest.mark.parametrize(
    "body",
    [{}, {"seq": -1}, {"seq": True}, {"seq": 1.5}, {"seq": "3"}, {"seq": None},
     {"seq": 2**63}, [], "3"],
)  # fmt: skip
def test_a_bad_seq_is_a_400_that_names_it(ops, body):
    response = put(client_for(UserFactory(username="alice")), "ops", body)
    assert response.status_code == 400
    assert "detail" in response.json()


def test_anonymous_callers_get_401_and_invisible_rooms_404(ops):
    bob = UserFactory(username="bob")
    private_room(bob, slug="secret")
    assert APIClient().get(url("ops")).status_code == 401
    assert put(APIClient(), "ops", {"seq": 1}).status_code == 401
    alice = client_for(UserFactory(username="alice"))
    assert alice.get(url("secret")).status_code == 404
    assert put(alice, "secret", {"seq": 1}).status_code == 404
    assert alice.get(url("nowhere")).status_code == 404


def test_a_move_is_published_to_the_users_group(ops, listen):
    alice = UserFactory(username="alice")
    channel = listen(services.user_group(alice.pk))
    put(client_for(alice), "ops", {"seq": 1})
    assert next_event(channel) == {
        "type": "read.moved",
        "room": "ops",
        "read_seq": 1,
        "unread": 2,
        "mentions": 0,
        "group": services.user_group(alice.pk),
    }
    put(client_for(alice), "ops", {"seq": 1})  # no move: nothing published
    with pytest.raises(TimeoutError):
        next_event(channel, timeout=0.3)


def test_moves_are_throttled_by_the_read_bucket(ops, settings):
    settings.READ_BURST = 2
    settings.READ_RATE_PER_SECOND = 0.001
    limits.reset_for_tests()
    client = client_for(UserFactory(username="alice"))
    assert put(client, "ops", {"seq": 1}).status_code == 200
    assert put(client, "ops", {"seq": 2}).status_code == 200
    refused = put(client, "ops", {"seq": 3})
    assert refused.status_code == 429
    assert refused["Retry-After"]
    assert client.get(url("ops")).json()["read_seq"] == 2
