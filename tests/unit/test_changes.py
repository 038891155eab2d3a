"""Edits and deletions (docs/protocol.md, 9.7): room events with their own
seq, applied in order by clients, ending with what the database holds."""

import json
import random

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core import protocol, services
from core.models import Message, Room
from tests.factories import RoomFactory, UserFactory, private_room
from tests.unit.conftest import connected, receive_until, send_json, token_for

pytestmark = pytest.mark.django_db


def post(room: Room, author: object, body: str, client_id: str | None = None) -> int:
    result = services.store_message(
        room=room, author=author, body=body, client_id=client_id
    )
    return result.message["seq"]


def edit(room: Room, actor: object, seq: int, body: str, client_id=None) -> dict:
    return services.store_change(
        room=room, actor=actor, seq=seq, body=body, client_id=client_id
    ).message


def delete(room: Room, actor: object, seq: int, client_id=None) -> dict:
    return services.store_change(
        room=room, actor=actor, seq=seq, body=None, client_id=client_id
    ).message


def every_event(room: Room) -> list[dict]:
    """The room's whole order, as history pages give it."""
    frames, after = [], 0
    while True:
        page, more = services.history(room=room, before=None, after=after, limit=100)
        frames += page
        if not more:
            return frames
        after = page[-1]["seq"]


class ClientView:
    """What a client holds after applying frames in seq order, as
    docs/protocol.md section 9.7 tells it to."""

    def __init__(self) -> None:
        self.messages: dict[int, dict] = {}
        self.seen: set[int] = set()

    def apply(self, frame: dict) -> None:
        assert frame["seq"] not in self.seen, "a seq came twice"
        self.seen.add(frame["seq"])
        kind = frame.get("kind")
        if kind is None:
            self.messages[frame["seq"]] = {
                "author": frame["author"],
                "body": frame["body"],
                "edited_at": frame.get("edited_at"),
                "deleted": frame.get("deleted", False),
            }
            return
        target = self.messages.get(frame["target"])
        if target is None or target["deleted"]:
            return
        if kind == "delete" or frame.get("deleted"):
            target.update(body="", deleted=True, edited_at=None)
        elif kind == "edit":
            target.update(body=frame["body"], edited_at=frame["sent_at"])

    def view(self) -> dict[int, dict]:
        return self.messages


def database_view(room: Room) -> dict[int, dict]:
    return {
        message.seq: {
            "author": message.author_name or None,
            "body": message.body,
            "edited_at": message.edited_at
            and protocol.format_timestamp(message.edited_at),
            "deleted": message.deleted,
        }
        for message in Message.objects.filter(room=room, kind=Message.Kind.MESSAGE)
    }


# --- the store ----------------------------------------------------------------------


def test_an_edit_keeps_the_seq_and_takes_the_next_one_as_an_event():
    room, alice = RoomFactory(), UserFactory(username="alice")
    seq = post(room, alice, "helo")
    event = edit(room, alice, seq, "hello", client_id="e1")
    assert event["seq"] == 2
    assert (event["kind"], event["target"], event["body"]) == ("edit", 1, "hello")
    assert (event["author"], event["client_id"]) == ("alice", "e1")
    room.refresh_from_db()
    assert room.last_seq == 2
    (message,) = services.history(room=room, before=2, after=None, limit=10)[0]
    assert message["seq"] == 1
    assert message["body"] == "hello"
    assert message["edited_at"] == event["sent_at"]
    assert "kind" not in message
    assert "deleted" not in message


def test_a_deletion_leaves_a_tombstone_and_no_body_anywhere():
    room, alice = RoomFactory(), UserFactory(username="alice")
    seq = post(room, alice, "secret plans")
    edit(room, alice, seq, "secret plans v2")
    post(room, alice, "unrelated")
    event = delete(room, alice, seq)
    assert event == {
        "type": "message",
        "room": room.slug,
        "seq": 4,
        "author": None,  # who deleted is for owners and staff
        "body": "",
        "sent_at": event["sent_at"],
        "client_id": None,
        "kind": "delete",
        "target": 1,
    }
    bodies = list(Message.objects.filter(room=room).values_list("seq", "body"))
    assert not any("secret" in body for _, body in bodies), bodies
    frames = every_event(room)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4]  # gap-free
    tombstone, wiped_edit = frames[0], frames[1]
    assert (tombstone["body"], tombstone["deleted"]) == ("", True)
    assert tombstone["author"] == "alice"
    assert (wiped_edit["kind"], wiped_edit["body"], wiped_edit["deleted"]) == (
        "edit",
        "",
        True,
    )
    assert frames[2]["body"] == "unrelated"
    # The deleter is kept for the audit.
    row = Message.objects.get(room=room, seq=4)
    assert (row.author_name, row.target_seq) == ("alice", 1)


def test_an_edit_replaces_the_old_text_everywhere():
    """Earlier edits take the new text too: an author who edits out a leaked
    password leaves it nowhere in the database."""
    room, alice = RoomFactory(), UserFactory(username="alice")
    seq = post(room, alice, "password: hunter2")
    edit(room, alice, seq, "password: hunter3")
    edit(room, alice, seq, "password: (removed)")
    bodies = list(Message.objects.filter(room=room).values_list("seq", "body"))
    assert bodies == [
        (1, "password: (removed)"),
        (2, "password: (removed)"),
        (3, "password: (removed)"),
    ]
    view = ClientView()
    for frame in every_event(room):
        view.apply(frame)
    assert view.view() == database_view(room)


def test_a_plain_message_frame_is_unchanged_for_older_clients():
    room, alice = RoomFactory(), UserFactory(username="alice")
    post(room, alice, "hi", client_id="c1")
    (frame,) = every_event(room)
    assert set(frame) == {
        "type",
        "room",
        "seq",
        "author",
        "body",
        "sent_at",
        "client_id",
    }


@pytest.mark.parametrize("kind", ["edit", "delete"])
def test_a_repeated_client_id_changes_nothing_and_returns_the_original(kind):
    room, alice = RoomFactory(), UserFactory(username="alice")
    seq = post(room, alice, "one")
    change = (
        (lambda: edit(room, alice, seq, "two", client_id="x"))
        if kind == "edit"
        else (lambda: delete(room, alice, seq, client_id="x"))
    )
    first = change()
    again = services.store_change(
        room=room, actor=alice, seq=seq, body="three", client_id="x"
    )
    assert not again.created
    assert again.message == first
    room.refresh_from_db()
    assert room.last_seq == 2
    assert Message.objects.get(room=room, seq=1).body in {"two", ""}


def test_not_found_names_only_live_messages_of_the_room():
    room, other = RoomFactory(), RoomFactory()
    alice = UserFactory(username="alice")
    seq = post(room, alice, "here")
    post(other, alice, "elsewhere")
    event_seq = edit(room, alice, seq, "edited")["seq"]
    for missing in (0, 99, event_seq):  # none, beyond, a change
        with pytest.raises(services.MessageNotFound):
            edit(room, alice, missing, "x")
    delete(room, alice, seq)
    with pytest.raises(services.MessageNotFound):
        edit(room, alice, seq, "after the delete")
    with pytest.raises(services.MessageNotFound):
        delete(room, alice, seq)  # twice
    # The other room's message 1 is untouched by all of this.
    assert Message.objects.get(room=other, seq=1).body == "elsewhere"
    room.refresh_from_db()
    assert room.last_seq == 3


def test_only_the_author_edits():
    room = RoomFactory(owner=UserFactory(username="owner"))
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    staff = UserFactory(username="staff", is_staff=True)
    seq = post(room, alice, "mine")
    system = post(room, None, "announcement")
    for actor, target in ((bob, seq), (room.owner, seq), (staff, seq), (alice, system)):
        with pytest.raises(services.AccessDenied):
            edit(room, actor, target, "hijacked")
    assert Message.objects.get(room=room, seq=seq).body == "mine"
    room.refresh_from_db()
    assert room.last_seq == 2  # refused changes take no seq


def test_the_author_the_owner_or_staff_delete_and_nobody_else():
    owner = UserFactory(username="owner")
    room = RoomFactory(owner=owner)
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    staff = UserFactory(username="staff", is_staff=True)
    seqs = [post(room, alice, f"m{n}") for n in range(4)]
    with pytest.raises(services.AccessDenied):
        delete(room, bob, seqs[0])
    assert not Message.objects.get(room=room, seq=seqs[0]).deleted
    delete(room, alice, seqs[0])
    delete(room, owner, seqs[1])
    delete(room, staff, seqs[2])
    assert [m.deleted for m in Message.objects.filter(room=room, seq__in=seqs)] == [
        True,
        True,
        True,
        False,
    ]


def test_staff_status_and_membership_are_read_again():
    owner, alice = UserFactory(username="owner"), UserFactory(username="alice")
    staff = UserFactory(username="staff", is_staff=True)
    room = RoomFactory()
    seq = post(room, alice, "keep")
    stale = get_user_model().objects.get(pk=staff.pk)
    get_user_model().objects.filter(pk=staff.pk).update(is_staff=False)
    with pytest.raises(services.AccessDenied):
        delete(room, stale, seq)
    secret = private_room(owner, alice, slug="secret")
    mine = post(secret, alice, "mine")
    secret.membership_set.filter(user=alice).delete()
    with pytest.raises(services.AccessDenied):
        edit(secret, alice, mine, "after leaving")
    assert Message.objects.get(room=secret, seq=mine).body == "mine"


def test_edits_are_validated_like_sends():
    room, alice = RoomFactory(), UserFactory(username="alice")
    seq = post(room, alice, "ok")
    for body, code in (
        ("   ", protocol.BAD_FRAME),
        ("x" * 4001, protocol.TOO_LONG),
        ("a\x00b", protocol.BAD_FRAME),
        (5, protocol.BAD_FRAME),
    ):
        with pytest.raises(protocol.ProtocolError) as raised:
            edit(room, alice, seq, body)
        assert raised.value.code == code
    assert edit(room, alice, seq, "x" * 4000)["body"] == "x" * 4000


def test_an_edit_after_a_delete_and_a_delete_after_an_edit_are_ordered():
    """Both take the room row's lock first: the later sees the earlier."""
    room, alice = RoomFactory(), UserFactory(username="alice")
    seq = post(room, alice, "race")
    edit(room, alice, seq, "edited first")
    delete(room, alice, seq)
    with pytest.raises(services.MessageNotFound):
        edit(room, alice, seq, "edited after")
    view = ClientView()
    for frame in every_event(room):
        view.apply(frame)
    assert view.view() == database_view(room)
    assert view.view()[seq]["deleted"]


def test_the_audit_is_for_owners_and_staff_and_never_has_a_body():
    owner, alice = UserFactory(username="owner"), UserFactory(username="alice")
    staff = UserFactory(username="staff", is_staff=True)
    room = RoomFactory(owner=owner)
    seqs = [post(room, alice, f"m{n}") for n in range(3)]
    delete(room, alice, seqs[0])
    delete(room, owner, seqs[2])
    for viewer in (owner, staff):
        page, more = services.deletions(room=room, actor=viewer, before=None, limit=1)
        assert more
        assert [(d["seq"], d["target"], d["deleted_by"]) for d in page] == [
            (5, 3, "owner")
        ]
        page, more = services.deletions(room=room, actor=viewer, before=5, limit=10)
        assert not more
        assert [(d["seq"], d["target"], d["deleted_by"]) for d in page] == [
            (4, 1, "alice")
        ]
        assert set(page[0]) == {"seq", "target", "deleted_by", "deleted_at"}
    with pytest.raises(services.AccessDenied):
        services.deletions(room=room, actor=alice, before=None, limit=10)
    # A room with no owner (made by ensure_room): not even anonymous
    # visitors, whose pk is as absent as its owner.
    ownerless = RoomFactory(owner=None)
    for outsider in (AnonymousUser(), alice):
        with pytest.raises(services.AccessDenied):
            services.deletions(room=ownerless, actor=outsider, before=None, limit=10)


# --- applying the order: the client's view is the database's -------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["post", "edit", "delete", "resume"]),
        st.integers(0, 30),
        st.sampled_from(["alice", "bob", "owner"]),
    ),
    min_size=1,
    max_size=40,
)


@hypothesis_settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(actions=ACTIONS)
def test_a_client_that_applies_every_event_in_order_ends_with_the_database(actions):
    """Posts, edits and deletes by three people, some refused; a client that
    was offline for some of them resumes with ?after= (a page of events
    above what it saw) and ends with the database's view."""
    Room.objects.all().delete()
    owner = UserFactory(username="owner")
    people = {
        "owner": owner,
        "alice": UserFactory(username="alice"),
        "bob": UserFactory(username="bob"),
    }
    room = RoomFactory(owner=owner)
    client, seen = ClientView(), 0
    for action, pick, who in actions:
        actor = people[who]
        room.refresh_from_db()
        if action == "post" or room.last_seq == 0:
            post(room, actor, f"{who} says {pick}")
        elif action == "resume":
            page, _ = services.replay(room_id=room.pk, after=seen, limit=pick + 1)
            for frame in page:
                client.apply(frame)
            seen = page[-1]["seq"] if page else seen
        else:
            target = pick % room.last_seq + 1
            try:
                if action == "edit":
                    edit(room, actor, target, f"{who} edits {pick}")
                else:
                    delete(room, actor, target)
            except (services.MessageNotFound, services.AccessDenied):
                pass
    while True:
        page, more = services.replay(room_id=room.pk, after=seen, limit=7)
        for frame in page:
            client.apply(frame)
        seen = page[-1]["seq"] if page else seen
        if not more:
            break
    assert client.view() == database_view(room)


def test_the_handshake_replay_and_history_give_the_same_frames():
    """The handshake reads its first page with its own SQL (replay_page);
    it must give what history gives, changes included."""
    room, alice = RoomFactory(), UserFactory(username="alice")
    rng = random.Random(7)
    for n in range(12):
        post(room, alice, f"m{n}")
    for seq in rng.sample(range(1, 13), 6):
        edit(room, alice, seq, f"edited {seq}")
    for seq in rng.sample(range(1, 13), 3):
        delete(room, alice, seq)
    room.refresh_from_db()
    fast, more = services.replay_page(room, 3, 100)
    slow, slow_more = services.history(room=room, before=None, after=3, limit=100)
    assert (fast, more) == (slow, slow_more)
    assert connection.vendor in {"sqlite", "postgresql"}


# --- the client frames --------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        ({"type": "edit", "body": "x"}, "Field 'seq' is required."),
        ({"type": "edit", "seq": "1", "body": "x"}, "Field 'seq' must be an integer."),
        ({"type": "edit", "seq": 1.0, "body": "x"}, "Field 'seq' must be an integer."),
        ({"type": "edit", "seq": True, "body": "x"}, "Field 'seq' must be an integer."),
        ({"type": "edit", "seq": 0, "body": "x"}, "Field 'seq' must be in 1..2^63-1."),
        ({"type": "edit", "seq": -1, "body": "x"}, "Field 'seq' must be in 1..2^63-1."),
        ({"type": "delete", "seq": 2**63}, "Field 'seq' must be in 1..2^63-1."),
        ({"type": "edit", "seq": 1}, "Field 'body' is required."),
        ({"type": "edit", "seq": 1, "body": " "}, "Field 'body' must not be blank."),
        ({"type": "delete"}, "Field 'seq' is required."),
        ({"type": "delete", "seq": None}, "Field 'seq' is required."),
        (
            {"type": "delete", "seq": 1, "client_id": "a b"},
            "Field 'client_id' must be 1-64 of [A-Za-z0-9_-].",
        ),
    ],
)
def test_bad_edit_and_delete_frames_say_what_is_wrong(frame, detail):
    with pytest.raises(protocol.ProtocolError) as raised:
        protocol.parse_client_frame(json.dumps(frame))
    assert raised.value.detail == detail
    assert raised.value.code == protocol.BAD_FRAME


def test_edit_and_delete_frames_parse():
    assert protocol.parse_client_frame(
        json.dumps({"type": "edit", "seq": 3, "body": " b ", "client_id": "e"})
    ) == protocol.EditFrame(seq=3, body=" b ", client_id="e")
    assert protocol.parse_client_frame(
        json.dumps({"type": "delete", "seq": 3})
    ) == protocol.DeleteFrame(seq=3, client_id=None)


# --- the HTTP API -------------------------------------------------------------------


def api_client(user: object) -> APIClient:
    client = APIClient()
    key = Token.objects.get_or_create(user=user)[0].key
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def message_url(slug: str, seq: int) -> str:
    return f"/api/rooms/{slug}/messages/{seq}/"


def test_patch_edits_and_delete_deletes_over_http(django_capture_on_commit_callbacks):
    owner, alice = UserFactory(username="owner"), UserFactory(username="alice")
    room = RoomFactory(slug="lobby", owner=owner)
    seq = post(room, alice, "typo")
    alice_api = api_client(alice)
    with django_capture_on_commit_callbacks(execute=False) as published:
        response = alice_api.patch(
            message_url("lobby", seq),
            {"body": "fixed", "client_id": "p1"},
            format="json",
        )
    assert response.status_code == 200, response.json()
    assert (response.json()["kind"], response.json()["target"]) == ("edit", seq)
    assert len(published) == 1  # reaches every instance once committed
    again = alice_api.patch(
        message_url("lobby", seq), {"body": "other", "client_id": "p1"}, format="json"
    )
    assert (again.status_code, again.json()) == (200, response.json())
    response = api_client(owner).delete(message_url("lobby", seq))
    assert response.status_code == 200, response.json()
    assert response.json()["kind"] == "delete"
    assert Message.objects.get(room=room, seq=seq).body == ""
    page = api_client(owner).get("/api/rooms/lobby/deletions/").json()
    assert page == {
        "deletions": [
            {
                "seq": 3,
                "target": seq,
                "deleted_by": "owner",
                "deleted_at": response.json()["sent_at"],
            }
        ],
        "has_more": False,
    }


def test_the_http_api_refuses_changes_clearly():
    owner, alice = UserFactory(username="owner"), UserFactory(username="alice")
    bob = UserFactory(username="bob")
    room = RoomFactory(slug="lobby", owner=owner)
    seq = post(room, alice, "alice's")
    url = message_url("lobby", seq)
    bob_api = api_client(bob)
    assert APIClient().patch(url, {"body": "x"}, format="json").status_code == 401
    assert APIClient().delete(url).status_code == 401
    refused = bob_api.patch(url, {"body": "x"}, format="json")
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"You may not edit message {seq}."
    assert bob_api.delete(url).status_code == 403
    alice_api = api_client(alice)
    for bad in ({}, {"body": ""}, {"body": 3}, {"body": "x" * 4001}):
        response = alice_api.patch(url, bad, format="json")
        assert response.status_code == 400, (bad, response.json())
        assert "body" in response.json()["errors"]
    response = alice_api.delete(url, {"client_id": "not valid!"}, format="json")
    assert response.status_code == 400
    for missing in (99, 2**63, 10**30):
        response = alice_api.patch(
            message_url("lobby", missing), {"body": "x"}, format="json"
        )
        assert response.status_code == 404, missing
    assert api_client(alice).get("/api/rooms/lobby/deletions/").status_code == 403
    assert APIClient().get("/api/rooms/lobby/deletions/").status_code == 401
    assert (
        api_client(alice).get("/api/rooms/lobby/deletions/?limit=0").status_code == 403
    )
    owner_api = api_client(owner)
    assert owner_api.get("/api/rooms/lobby/deletions/?limit=0").status_code == 400
    assert owner_api.get("/api/rooms/lobby/deletions/?before=x").status_code == 400
    assert owner_api.get("/api/rooms/nope/deletions/").status_code == 404
    assert Message.objects.get(room=room, seq=seq).body == "alice's"
    room.refresh_from_db()
    assert room.last_seq == 1
    alice_api.delete(url)
    gone = alice_api.delete(url)
    assert gone.status_code == 404
    assert "was deleted" in gone.json()["detail"]


def test_a_private_room_hides_its_messages_from_non_members_over_http():
    owner, alice = UserFactory(username="owner"), UserFactory(username="alice")
    room = private_room(owner, slug="secret")
    seq = post(room, owner, "members only")
    url = message_url("secret", seq)
    assert api_client(alice).delete(url).status_code == 404
    assert api_client(alice).get("/api/rooms/secret/deletions/").status_code == 404
    assert Message.objects.get(room=room, seq=seq).body == "members only"


# --- over the WebSocket ---------------------------------------------------------------

ws_db = pytest.mark.django_db(transaction=True)


async def answer(ws: object, frame: dict) -> tuple[dict, list[dict]]:
    """Send ``frame`` and read up to its ack or error (and what came first)."""
    await send_json(ws, frame)
    return await receive_until(
        ws,
        lambda f: (
            f["type"] in {"ack", "error"}
            and f.get("client_id") == frame.get("client_id")
        ),
    )


@ws_db
async def test_an_edit_and_a_delete_are_acked_and_reach_every_connection(
    lobby, alice, bob
):
    async with (
        connected("lobby", token=await token_for(alice)) as alice_ws,
        connected("lobby", token=await token_for(bob)) as bob_ws,
        connected("lobby") as anonymous_ws,
    ):
        await answer(alice_ws, {"type": "send", "body": "teh", "client_id": "s"})
        ack, _ = await answer(
            alice_ws, {"type": "edit", "seq": 1, "body": "the", "client_id": "e"}
        )
        assert ack == {"type": "ack", "client_id": "e", "seq": 2}
        ack, _ = await answer(alice_ws, {"type": "delete", "seq": 1, "client_id": "d"})
        assert ack == {"type": "ack", "client_id": "d", "seq": 3}
        for ws in (bob_ws, anonymous_ws):
            frames = []
            while len(frames) < 3:
                frame, _ = await receive_until(ws, lambda f: f["type"] == "message")
                frames.append(frame)
            assert [(f["seq"], f.get("kind"), f.get("target")) for f in frames] == [
                (1, None, None),
                (2, "edit", 1),
                (3, "delete", 1),
            ]
            assert frames[1]["body"] == "the"
            assert (frames[2]["author"], frames[2]["body"]) == (None, "")


@ws_db
async def test_refused_changes_name_their_client_id_and_the_socket_lives(
    lobby, alice, bob
):
    await database_sync_to_async(post)(lobby, alice, "alice's")
    async with (
        connected("lobby") as anonymous_ws,
        connected("lobby", token=await token_for(bob)) as bob_ws,
    ):
        error, _ = await answer(
            anonymous_ws, {"type": "delete", "seq": 1, "client_id": "a"}
        )
        assert (error["code"], error["client_id"]) == ("unauthenticated", "a")
        for frame, code in (
            ({"type": "edit", "seq": 1, "body": "mine now"}, "forbidden"),
            ({"type": "delete", "seq": 1}, "forbidden"),
            ({"type": "edit", "seq": 7, "body": "x"}, "not_found"),
            ({"type": "delete", "seq": 7}, "not_found"),
            ({"type": "edit", "seq": 1, "body": "x" * 4001}, "too_long"),
            ({"type": "edit", "seq": "1", "body": "x"}, "bad_frame"),
        ):
            error, _ = await answer(bob_ws, {**frame, "client_id": "b"})
            assert (error["type"], error["code"], error["client_id"]) == (
                "error",
                code,
                "b",
            ), frame
        await send_json(bob_ws, {"type": "ping"})
        assert (await receive_until(bob_ws, lambda f: f["type"] == "pong"))[0]
    assert await database_sync_to_async(
        lambda: list(Message.objects.values_list("seq", "body", "deleted"))
    )() == [(1, "alice's", False)]


@ws_db
async def test_changes_spend_the_send_budget(lobby, alice, settings):
    settings.SEND_BURST = 2
    settings.SEND_RATE_PER_SECOND = 0.1
    async with connected("lobby", token=await token_for(alice)) as ws:
        await answer(ws, {"type": "send", "body": "one", "client_id": "s"})
        await answer(ws, {"type": "edit", "seq": 1, "body": "two", "client_id": "e"})
        error, _ = await answer(ws, {"type": "delete", "seq": 1, "client_id": "d"})
        assert (error["code"], error["client_id"]) == ("rate_limited", "d")
        assert error["retry_after_ms"] > 0
    assert await database_sync_to_async(
        lambda: list(Message.objects.values_list("seq", "body", "deleted"))
    )() == [(1, "two", False), (2, "two", False)]


@ws_db
async def test_a_resumed_connection_replays_changes_in_their_place(lobby, alice):
    def history_of_changes() -> None:
        for n in range(3):
            post(lobby, alice, f"m{n}")
        edit(lobby, alice, 1, "m0 fixed")
        delete(lobby, alice, 2)

    await database_sync_to_async(history_of_changes)()
    async with connected("lobby", token=await token_for(alice), query="after=1") as ws:
        welcome = await ws.receive_json_from()
        assert welcome["last_seq"] == 5
        replayed, frames = await receive_until(ws, lambda f: f["type"] == "replayed")
        assert (replayed["count"], replayed["complete"]) == (4, True)
        assert [(f["seq"], f.get("kind"), f.get("deleted")) for f in frames] == [
            (2, None, True),  # its current state: a tombstone
            (3, None, None),
            (4, "edit", None),
            (5, "delete", None),
        ]
        assert frames[2]["body"] == "m0 fixed"
