"""The authorization matrix: who may do what, on every surface, in one place.

Eight actors x three rooms (public, private, unknown slug) x every WebSocket
frame, every HTTP API route and every page, each against the real ASGI
application (WebSockets) or Django's test clients (HTTP), as
docs/protocol.md sections 2, 5-7, 12 and 15 describe:

- the tables below are the whole policy; every cell is one test, and
  ``test_the_tables_cover_every_cell`` proves none is missing;
- wherever an actor may not see the private room, its answer is the answer
  for a slug that does not exist: the same ASGI close message for a
  WebSocket handshake, the same status and bytes for the API and pages (and
  a "slug is taken" answer for the private room is the one for the public
  room), so nobody learns which private rooms exist;
- a credential that no longer works (a deleted token, a deactivated
  account's token) is refused everywhere the token is read, never served as
  anonymous; a deactivated account's browser session is simply anonymous.

The actors. Olive owns both rooms; Mia, Rex, Dee, Tom and Heidi are members
of both, Nora and Grace of neither. Every actor sends all its credentials
with every request; WebSockets and the API read the token first (section
2.2), pages read the session only.

=====================  =========================================================
anonymous              no credentials
non-member             Nora: token and session, in no room
member                 Mia: token and session
owner                  Olive: token and session
removed-member         Rex: token and session; his memberships were deleted
deactivated-token      Dee's token; Dee was then deactivated with
                       ``QuerySet.update()``, which deletes nothing, so only
                       the ``is_active`` check stands between her and the rooms
deactivated-session    Dee's session (signed in before the deactivation)
deleted-token          Tom's token, deleted (Tom is still a member of both)
=====================  =========================================================
"""

from dataclasses import dataclass
from importlib import import_module
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
)
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from backend.asgi import application
from core import services
from core.models import Membership, Message, Room
from tests.factories import PASSWORD, RoomFactory, UserFactory, private_room
from tests.unit.conftest import receive_until, send_json, ws_path

pytestmark = pytest.mark.django_db(transaction=True)
# HTTP requests run in the test's own thread: a rolled-back transaction is
# enough, and much cheaper than emptying every table after each test.
ROLLBACK_DB = pytest.mark.django_db

ROOMS = ("public", "private", "unknown")
SLUG = {"public": "lobby", "private": "secret", "unknown": "nowhere"}
ACTORS = (
    "anonymous",
    "non-member",
    "member",
    "owner",
    "removed-member",
    "deactivated-token",
    "deactivated-session",
    "deleted-token",
)
FIRST_WORDS = "first words"  # the one message stored in each room

# --- the policy ------------------------------------------------------------------
# Each grid: action -> actor -> (public room, private room, unknown slug).

# WebSocket handshake (2.4, 2.5, 12) and then each client frame (6, 7).
JOINS = "joins as themself"
READ_ONLY = "joins anonymous"  # welcome.user is null; reads but never writes
REFUSED = "refused (403)"
NO_SOCKET = "-"  # the handshake was refused: there is nothing to send on
ACK = "ack"
HISTORY = "history"
RELAYED = "relayed to the others"
PONG = "pong"
UNAUTHENTICATED = "error unauthenticated"

# fmt: off
HANDSHAKE = {
    "anonymous":           (READ_ONLY, REFUSED, REFUSED),
    "non-member":          (JOINS,     REFUSED, REFUSED),
    "member":              (JOINS,     JOINS,   REFUSED),
    "owner":               (JOINS,     JOINS,   REFUSED),
    "removed-member":      (JOINS,     REFUSED, REFUSED),
    "deactivated-token":   (REFUSED,   REFUSED, REFUSED),
    "deactivated-session": (READ_ONLY, REFUSED, REFUSED),
    "deleted-token":       (REFUSED,   REFUSED, REFUSED),
}

_ = NO_SOCKET
FRAMES = {
    "send": {
        "anonymous":           (UNAUTHENTICATED, _,   _),
        "non-member":          (ACK,             _,   _),
        "member":              (ACK,             ACK, _),
        "owner":               (ACK,             ACK, _),
        "removed-member":      (ACK,             _,   _),
        "deactivated-token":   (_,               _,   _),
        "deactivated-session": (UNAUTHENTICATED, _,   _),
        "deleted-token":       (_,               _,   _),
    },
    "history": {
        "anonymous":           (HISTORY, _,       _),
        "non-member":          (HISTORY, _,       _),
        "member":              (HISTORY, HISTORY, _),
        "owner":               (HISTORY, HISTORY, _),
        "removed-member":      (HISTORY, _,       _),
        "deactivated-token":   (_,       _,       _),
        "deactivated-session": (HISTORY, _,       _),
        "deleted-token":       (_,       _,       _),
    },
    "typing": {
        "anonymous":           (UNAUTHENTICATED, _,       _),
        "non-member":          (RELAYED,         _,       _),
        "member":              (RELAYED,         RELAYED, _),
        "owner":               (RELAYED,         RELAYED, _),
        "removed-member":      (RELAYED,         _,       _),
        "deactivated-token":   (_,               _,       _),
        "deactivated-session": (UNAUTHENTICATED, _,       _),
        "deleted-token":       (_,               _,       _),
    },
    "ping": {
        "anonymous":           (PONG, _,    _),
        "non-member":          (PONG, _,    _),
        "member":              (PONG, PONG, _),
        "owner":               (PONG, PONG, _),
        "removed-member":      (PONG, _,    _),
        "deactivated-token":   (_,    _,    _),
        "deactivated-session": (PONG, _,    _),
        "deleted-token":       (_,    _,    _),
    },
}
# fmt: on

# The HTTP API (section 15).
OK = "200"
LISTED = "200, the room listed"
UNLISTED = "200, the room not listed"
CREATED = "201"
DONE = "204"
TAKEN = "400 slug taken"
SIGN_IN = "401 sign in"
BAD_TOKEN = "401 invalid token"
FORBIDDEN = "403"
NO_ROOM = "404 no such room"
FOUND = "200, the room's message found"
UNFOUND = "200, nothing from the room"
MEMBERS = "200, the room's members listed"
NO_MEMBERS = "200, no members (a public room admits everyone)"

# fmt: off
API = {
    "GET /api/rooms/": {
        "anonymous":           (LISTED,    UNLISTED,  UNLISTED),
        "non-member":          (LISTED,    UNLISTED,  UNLISTED),
        "member":              (LISTED,    LISTED,    UNLISTED),
        "owner":               (LISTED,    LISTED,    UNLISTED),
        "removed-member":      (LISTED,    UNLISTED,  UNLISTED),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (LISTED,    UNLISTED,  UNLISTED),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "POST /api/rooms/ (this slug)": {
        "anonymous":           (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "non-member":          (TAKEN,     TAKEN,     CREATED),
        "member":              (TAKEN,     TAKEN,     CREATED),
        "owner":               (TAKEN,     TAKEN,     CREATED),
        "removed-member":      (TAKEN,     TAKEN,     CREATED),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "GET messages": {
        "anonymous":           (OK,        NO_ROOM,   NO_ROOM),
        "non-member":          (OK,        NO_ROOM,   NO_ROOM),
        "member":              (OK,        OK,        NO_ROOM),
        "owner":               (OK,        OK,        NO_ROOM),
        "removed-member":      (OK,        NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (OK,        NO_ROOM,   NO_ROOM),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "POST messages": {
        "anonymous":           (SIGN_IN,   NO_ROOM,   NO_ROOM),
        "non-member":          (CREATED,   NO_ROOM,   NO_ROOM),
        "member":              (CREATED,   CREATED,   NO_ROOM),
        "owner":               (CREATED,   CREATED,   NO_ROOM),
        "removed-member":      (CREATED,   NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (SIGN_IN,   NO_ROOM,   NO_ROOM),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "GET /api/search/ (every room)": {
        "anonymous":           (FOUND,     UNFOUND,   UNFOUND),
        "non-member":          (FOUND,     UNFOUND,   UNFOUND),
        "member":              (FOUND,     FOUND,     UNFOUND),
        "owner":               (FOUND,     FOUND,     UNFOUND),
        "removed-member":      (FOUND,     UNFOUND,   UNFOUND),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (FOUND,     UNFOUND,   UNFOUND),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "GET /api/search/?room=<slug>": {
        "anonymous":           (FOUND,     NO_ROOM,   NO_ROOM),
        "non-member":          (FOUND,     NO_ROOM,   NO_ROOM),
        "member":              (FOUND,     FOUND,     NO_ROOM),
        "owner":               (FOUND,     FOUND,     NO_ROOM),
        "removed-member":      (FOUND,     NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (FOUND,     NO_ROOM,   NO_ROOM),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "GET /api/rooms/<slug>/": {
        "anonymous":           (OK,        NO_ROOM,   NO_ROOM),
        "non-member":          (OK,        NO_ROOM,   NO_ROOM),
        "member":              (OK,        OK,        NO_ROOM),
        "owner":               (OK,        OK,        NO_ROOM),
        "removed-member":      (OK,        NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (OK,        NO_ROOM,   NO_ROOM),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "PATCH /api/rooms/<slug>/ (rename)": {
        "anonymous":           (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "non-member":          (FORBIDDEN, NO_ROOM,   NO_ROOM),
        "member":              (FORBIDDEN, FORBIDDEN, NO_ROOM),
        "owner":               (OK,        OK,        NO_ROOM),
        "removed-member":      (FORBIDDEN, NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "GET members": {
        "anonymous":           (NO_MEMBERS, NO_ROOM,   NO_ROOM),
        "non-member":          (NO_MEMBERS, NO_ROOM,   NO_ROOM),
        "member":              (NO_MEMBERS, MEMBERS,   NO_ROOM),
        "owner":               (NO_MEMBERS, MEMBERS,   NO_ROOM),
        "removed-member":      (NO_MEMBERS, NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN,  BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (NO_MEMBERS, NO_ROOM,   NO_ROOM),
        "deleted-token":       (BAD_TOKEN,  BAD_TOKEN, BAD_TOKEN),
    },
    "POST members (add grace)": {
        "anonymous":           (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "non-member":          (FORBIDDEN, NO_ROOM,   NO_ROOM),
        "member":              (FORBIDDEN, FORBIDDEN, NO_ROOM),
        "owner":               (FORBIDDEN, CREATED,   NO_ROOM),
        "removed-member":      (FORBIDDEN, NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "DELETE members/heidi": {
        "anonymous":           (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "non-member":          (FORBIDDEN, NO_ROOM,   NO_ROOM),
        "member":              (FORBIDDEN, FORBIDDEN, NO_ROOM),
        "owner":               (FORBIDDEN, DONE,      NO_ROOM),
        "removed-member":      (FORBIDDEN, NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
    "DELETE members/<self> (leave)": {
        "anonymous":           (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "non-member":          (FORBIDDEN, NO_ROOM,   NO_ROOM),
        "member":              (FORBIDDEN, DONE,      NO_ROOM),
        "owner":               (FORBIDDEN, FORBIDDEN, NO_ROOM),
        "removed-member":      (FORBIDDEN, NO_ROOM,   NO_ROOM),
        "deactivated-token":   (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
        "deactivated-session": (SIGN_IN,   SIGN_IN,   SIGN_IN),
        "deleted-token":       (BAD_TOKEN, BAD_TOKEN, BAD_TOKEN),
    },
}

# The routes that name no room: action -> actor -> outcome.
ACCOUNT_API = {
    "POST /api/auth/token/ (grace's password)": {
        "anonymous": OK, "non-member": OK, "member": OK, "owner": OK,
        "removed-member": OK, "deactivated-token": BAD_TOKEN,
        "deactivated-session": OK, "deleted-token": BAD_TOKEN,
    },
    "DELETE /api/auth/token/": {
        "anonymous": SIGN_IN, "non-member": DONE, "member": DONE, "owner": DONE,
        "removed-member": DONE, "deactivated-token": BAD_TOKEN,
        "deactivated-session": SIGN_IN, "deleted-token": BAD_TOKEN,
    },
    "GET /api/users/?prefix=gr": {
        "anonymous": SIGN_IN, "non-member": OK, "member": OK, "owner": OK,
        "removed-member": OK, "deactivated-token": BAD_TOKEN,
        "deactivated-session": SIGN_IN, "deleted-token": BAD_TOKEN,
    },
    "GET /api/schema/": {
        "anonymous": OK, "non-member": OK, "member": OK, "owner": OK,
        "removed-member": OK, "deactivated-token": BAD_TOKEN,
        "deactivated-session": OK, "deleted-token": BAD_TOKEN,
    },
}

# Pages. They read the session only: a token there is ignored, so its holder
# is served exactly as anonymous (and gets nothing anonymous could not).
POSTS = "200, with the composer"
READS = "200, read-only"
NOT_FOUND = "404"
TO_LOGIN = "302 to the login page"
OPENED = "302 to the new room"
TAKEN_FORM = "400 slug taken"

PAGES = {
    "GET /": {
        "anonymous":           (LISTED, UNLISTED, UNLISTED),
        "non-member":          (LISTED, UNLISTED, UNLISTED),
        "member":              (LISTED, LISTED,   UNLISTED),
        "owner":               (LISTED, LISTED,   UNLISTED),
        "removed-member":      (LISTED, UNLISTED, UNLISTED),
        "deactivated-token":   (LISTED, UNLISTED, UNLISTED),
        "deactivated-session": (LISTED, UNLISTED, UNLISTED),
        "deleted-token":       (LISTED, UNLISTED, UNLISTED),
    },
    "GET /rooms/<slug>/": {
        "anonymous":           (READS, NOT_FOUND, NOT_FOUND),
        "non-member":          (POSTS, NOT_FOUND, NOT_FOUND),
        "member":              (POSTS, POSTS,     NOT_FOUND),
        "owner":               (POSTS, POSTS,     NOT_FOUND),
        "removed-member":      (POSTS, NOT_FOUND, NOT_FOUND),
        "deactivated-token":   (READS, NOT_FOUND, NOT_FOUND),
        "deactivated-session": (READS, NOT_FOUND, NOT_FOUND),
        "deleted-token":       (READS, NOT_FOUND, NOT_FOUND),
    },
    "POST /rooms/new/ (this slug)": {
        "anonymous":           (TO_LOGIN,   TO_LOGIN,   TO_LOGIN),
        "non-member":          (TAKEN_FORM, TAKEN_FORM, OPENED),
        "member":              (TAKEN_FORM, TAKEN_FORM, OPENED),
        "owner":               (TAKEN_FORM, TAKEN_FORM, OPENED),
        "removed-member":      (TAKEN_FORM, TAKEN_FORM, OPENED),
        "deactivated-token":   (TO_LOGIN,   TO_LOGIN,   TO_LOGIN),
        "deactivated-session": (TO_LOGIN,   TO_LOGIN,   TO_LOGIN),
        "deleted-token":       (TO_LOGIN,   TO_LOGIN,   TO_LOGIN),
    },
}
# fmt: on


def cells(grid: dict[str, dict[str, tuple[str, ...]]]) -> list[Any]:
    """One pytest param per (actor, room, action) cell of a grid."""
    return [
        pytest.param(actor, room, action, outcome, id=f"{action}|{actor}|{room}")
        for action, rows in grid.items()
        for actor, outcomes in rows.items()
        for room, outcome in zip(ROOMS, outcomes, strict=True)
        if outcome != NO_SOCKET
    ]


def expected(grid: dict, actor: str, room: str, action: str) -> str:
    return grid[action][actor][ROOMS.index(room)]


def test_the_tables_cover_every_cell():
    """Every actor x room x action has an answer, and a frame has an answer
    exactly where the handshake admits the actor."""
    for grid in (API, PAGES, FRAMES):
        for rows in grid.values():
            assert tuple(rows) == ACTORS
            assert all(len(outcomes) == len(ROOMS) for outcomes in rows.values())
    assert tuple(HANDSHAKE) == ACTORS
    for frame in FRAMES:
        for actor in ACTORS:
            for room in ROOMS:
                admitted = HANDSHAKE[actor][ROOMS.index(room)] != REFUSED
                has_answer = expected(FRAMES, actor, room, frame) != NO_SOCKET
                assert admitted == has_answer, (frame, actor, room)
    for rows in ACCOUNT_API.values():
        assert tuple(rows) == ACTORS


# --- the world ---------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    username: str | None  # the person behind the credentials, if any
    token: str | None = None  # sent as ``Authorization: Token <key>``
    session: str | None = None  # sent as the session cookie

    def ws_headers(self) -> list[tuple[bytes, bytes]]:
        headers = []
        if self.token is not None:
            headers.append((b"authorization", f"Token {self.token}".encode()))
        if self.session is not None:
            cookie = f"{settings.SESSION_COOKIE_NAME}={self.session}"
            headers.append((b"cookie", cookie.encode()))
        return headers

    def http(self, client_class: type[Client] = Client) -> Client:
        client = client_class()
        if self.token is not None:
            client.defaults["HTTP_AUTHORIZATION"] = f"Token {self.token}"
        if self.session is not None:
            client.cookies[settings.SESSION_COOKIE_NAME] = self.session
        return client


def _session_of(user: Any) -> str:
    """A signed-in session, as ``login()`` stores it (``force_login`` is
    slower: it runs the whole login machinery)."""
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


def _token_of(user: object) -> str:
    return Token.objects.create(user=user).key


def build_world() -> dict[str, Actor]:
    olive, mia, rex, dee, tom, heidi = (
        UserFactory(username=name)
        for name in ("olive", "mia", "rex", "dee", "tom", "heidi")
    )
    nora = UserFactory(username="nora")
    UserFactory(username="grace")  # active, in no room: the one the owner adds
    for kind, private in (("public", False), ("private", True)):
        room = RoomFactory(slug=SLUG[kind], is_private=private, owner=olive)
        Membership.objects.bulk_create(
            Membership(room=room, user=user)
            for user in (olive, mia, rex, dee, tom, heidi)
        )
        services.store_message(
            room=room, author=olive, body=FIRST_WORDS, client_id=None
        )

    actors = {"anonymous": Actor(None)}
    for name, user in (
        ("non-member", nora),
        ("member", mia),
        ("owner", olive),
        ("removed-member", rex),
    ):
        actors[name] = Actor(user.username, _token_of(user), _session_of(user))
    Membership.objects.filter(user=rex).delete()

    actors["deactivated-token"] = Actor("dee", token=_token_of(dee))
    actors["deactivated-session"] = Actor("dee", session=_session_of(dee))
    get_user_model().objects.filter(pk=dee.pk).update(is_active=False)

    actors["deleted-token"] = Actor("tom", token=_token_of(tom))
    Token.objects.filter(user=tom).delete()
    return actors


@pytest.fixture
def world() -> dict[str, Actor]:
    return build_world()


@pytest.fixture
async def aworld() -> dict[str, Actor]:
    return await database_sync_to_async(build_world)()


# --- WebSocket ---------------------------------------------------------------------


async def handshake(slug: str, actor: Actor) -> tuple[WebsocketCommunicator, dict]:
    """Open a handshake; the communicator and the application's first answer
    (``websocket.accept`` or ``websocket.close``) as sent over ASGI."""
    communicator = WebsocketCommunicator(application, ws_path(slug), actor.ws_headers())
    await communicator.send_input({"type": "websocket.connect"})
    answer = await communicator.receive_output(timeout=5)
    return communicator, answer


async def refusal(slug: str, actor: Actor) -> dict:
    """The close message that refuses a handshake (before any accept)."""
    communicator, answer = await handshake(slug, actor)
    try:
        assert answer["type"] == "websocket.close", f"{slug}: admitted: {answer}"
        return answer
    finally:
        await communicator.disconnect()


async def admitted(slug: str, actor: Actor) -> tuple[WebsocketCommunicator, dict]:
    """An accepted connection and its welcome frame (presence read too)."""
    communicator, answer = await handshake(slug, actor)
    if answer["type"] != "websocket.accept":
        await communicator.disconnect()
        pytest.fail(f"handshake to {slug} refused: {answer}")
    welcome = await communicator.receive_json_from(timeout=5)
    presence = await communicator.receive_json_from(timeout=5)
    assert presence["type"] == "presence"
    return communicator, welcome


@pytest.mark.parametrize(
    ("actor", "room", "outcome"),
    [
        pytest.param(actor, room, outcome, id=f"handshake|{actor}|{room}")
        for actor, outcomes in HANDSHAKE.items()
        for room, outcome in zip(ROOMS, outcomes, strict=True)
    ],
)
async def test_websocket_handshake(aworld, actor, room, outcome):
    who = aworld[actor]
    if outcome == REFUSED:
        answer = await refusal(SLUG[room], who)
        # Unknown and forbidden look the same: the very same ASGI message
        # (Daphne answers both with HTTP 403).
        assert answer == await refusal(SLUG["unknown"], who)
        assert answer == await refusal(SLUG["unknown"], aworld["anonymous"])
        return
    communicator, welcome = await admitted(SLUG[room], who)
    await communicator.disconnect()
    user = who.username if outcome == JOINS else None
    assert welcome == {
        "type": "welcome",
        "room": SLUG[room],
        "user": user,
        "last_seq": 1,
    }


async def answers_until_fence(ws: WebsocketCommunicator, pongs: int) -> list[dict]:
    """The frames that answer the client (room traffic aside) up to the
    ``pongs``-th pong, which is left out."""
    answers: list[dict] = []
    while True:
        frame, _ = await receive_until(
            ws, lambda f: f["type"] not in {"presence", "message", "typing"}
        )
        if frame == {"type": "pong"}:
            pongs -= 1
            if pongs == 0:
                return answers
        answers.append(frame)


@database_sync_to_async
def stored(slug: str) -> list[tuple[str | None, str]]:
    return list(
        Message.objects.filter(room__slug=slug)
        .order_by("seq")
        .values_list("author_name", "body")
    )


FRAME_OF = {
    "send": {"type": "send", "body": "hello", "client_id": "c-1"},
    "history": {"type": "history", "limit": 10},
    "typing": {"type": "typing"},
    "ping": {"type": "ping"},
}


@pytest.mark.parametrize(("actor", "room", "frame", "outcome"), cells(FRAMES))
async def test_websocket_frame(aworld, actor, room, frame, outcome):
    """One frame from an admitted actor; the owner watches the room."""
    slug, who = SLUG[room], aworld[actor]
    observer, _ = await admitted(slug, aworld["owner"])
    ws, _ = await admitted(slug, who)
    try:
        await send_json(ws, FRAME_OF[frame])
        # A ping behind it fences the answer: every frame is answered in
        # order, so whatever came before the fence's pong is the answer.
        await send_json(ws, {"type": "ping"})
        answers = await answers_until_fence(ws, pongs=2 if frame == "ping" else 1)
        if outcome == ACK:
            assert answers == [{"type": "ack", "client_id": "c-1", "seq": 2}]
            assert await stored(slug) == [
                ("olive", FIRST_WORDS),
                (who.username, "hello"),
            ]
        elif outcome == HISTORY:
            assert [answer["type"] for answer in answers] == ["history"], answers
            assert [m["body"] for m in answers[0]["messages"]] == [FIRST_WORDS]
            assert answers[0]["has_more"] is False
        elif outcome == PONG:
            assert answers == [{"type": "pong"}]
        elif outcome == RELAYED:  # nothing for the sender, the notice for others
            assert answers == []
            seen, _ = await receive_until(observer, lambda f: f["type"] == "typing")
            assert seen == {"type": "typing", "user": who.username}
        else:
            assert outcome == UNAUTHENTICATED
            client_id = FRAME_OF[frame].get("client_id")
            assert [
                (answer["type"], answer.get("code"), answer.get("client_id"))
                for answer in answers
            ] == [("error", "unauthenticated", client_id)], answers
            assert await stored(slug) == [("olive", FIRST_WORDS)]
    finally:
        await ws.disconnect()
        await observer.disconnect()


# --- HTTP API ----------------------------------------------------------------------


def call_api(client: APIClient, action: str, slug: str, who: Actor) -> Any:
    rooms, messages = "/api/rooms/", f"/api/rooms/{slug}/messages/"
    members = f"/api/rooms/{slug}/members/"
    if action == "GET /api/rooms/":
        return client.get(rooms, {"limit": 500})
    if action == "POST /api/rooms/ (this slug)":
        return client.post(rooms, {"name": "Copy", "slug": slug}, format="json")
    if action == "GET messages":
        return client.get(messages)
    if action == "POST messages":
        return client.post(messages, {"body": "hi", "client_id": "h-1"}, format="json")
    if action == "GET /api/search/ (every room)":
        return client.get("/api/search/", {"q": FIRST_WORDS})
    if action == "GET /api/search/?room=<slug>":
        return client.get("/api/search/", {"q": FIRST_WORDS, "room": slug})
    if action == "GET /api/rooms/<slug>/":
        return client.get(f"/api/rooms/{slug}/")
    if action == "PATCH /api/rooms/<slug>/ (rename)":
        return client.patch(f"/api/rooms/{slug}/", {"name": "Renamed"}, format="json")
    if action == "GET members":
        return client.get(members)
    if action == "GET /api/users/?prefix=gr":
        return client.get("/api/users/", {"prefix": "gr"})
    if action == "POST members (add grace)":
        return client.post(members, {"username": "grace"}, format="json")
    if action == "DELETE members/heidi":
        return client.delete(f"{members}heidi/")
    if action == "DELETE members/<self> (leave)":
        return client.delete(f"{members}{who.username or 'nobody'}/")
    if action == "POST /api/auth/token/ (grace's password)":
        body = {"username": "grace", "password": PASSWORD}
        return client.post("/api/auth/token/", body, format="json")
    if action == "DELETE /api/auth/token/":
        return client.delete("/api/auth/token/")
    assert action == "GET /api/schema/"
    return client.get("/api/schema/")


def check_api(response: Any, outcome: str, room: str) -> None:
    status = int(outcome[:3])
    assert response.status_code == status, response.content
    if status == 204:
        assert response.content == b""
        return
    if status < 400:
        if outcome in (LISTED, UNLISTED):
            slugs = [listed["slug"] for listed in response.json()]
            assert (SLUG[room] in slugs) == (outcome == LISTED), slugs
        if outcome in (FOUND, UNFOUND):
            found = [hit["room"] for hit in response.json()["results"]]
            assert (SLUG[room] in found) == (outcome == FOUND), found
        if outcome == NO_MEMBERS:
            assert response.json() == []
        if outcome == MEMBERS:  # those of build_world's rooms, Rex removed
            assert response.json() == [
                {"username": name, "is_owner": name == "olive"}
                for name in ("dee", "heidi", "mia", "olive", "tom")
            ]
        return
    # Every refusal is a JSON object with a ``detail`` (section 15), on
    # every route (the schema's too, though its answers are YAML).
    content_type = response["Content-Type"]
    assert content_type.startswith("application/json"), (content_type, response.content)
    data = response.json()
    if outcome == NO_ROOM:
        assert data == {"detail": "No such room."}
    elif outcome == BAD_TOKEN:
        assert data == {"detail": "Invalid token."}
    elif outcome == TAKEN:
        assert data["errors"] == {"slug": [f"The slug {SLUG[room]} is taken."]}
    else:
        assert data["detail"], data
        assert data != {"detail": "Invalid token."}


@pytest.mark.parametrize(("actor", "room", "action", "outcome"), cells(API))
@ROLLBACK_DB
def test_api_room_route(world, actor, room, action, outcome):
    who = world[actor]
    response = call_api(who.http(APIClient), action, SLUG[room], who)
    check_api(response, outcome, room)
    if action == "GET messages" and outcome == OK:
        bodies = [m["body"] for m in response.json()["messages"]]
        assert bodies == [FIRST_WORDS]
    if action == "POST messages" and outcome == CREATED:
        assert response.json()["author"] == who.username
    if action.startswith("GET /api/rooms/<slug>/") and outcome == OK:
        assert response.json()["slug"] == SLUG[room]
    if action.startswith("PATCH") and outcome == OK:
        assert response.json()["name"] == "Renamed"
        assert Room.objects.get(slug=SLUG[room]).name == "Renamed"
    if room != "private":
        return
    # Unknown and forbidden look the same: same status, same bytes.
    twin = None
    if outcome == TAKEN:  # "slug is taken" says no more than for a public room
        twin = "public"
    elif (
        outcome == expected(API, actor, "unknown", action)
        and response.status_code >= 400
    ):
        twin = "unknown"
    if twin is not None:
        other = call_api(who.http(APIClient), action, SLUG[twin], who)
        assert other.status_code == response.status_code
        assert other.content == response.content.replace(
            SLUG["private"].encode(), SLUG[twin].encode()
        )


@pytest.mark.parametrize(
    ("actor", "action", "outcome"),
    [
        pytest.param(actor, action, outcome, id=f"{action}|{actor}")
        for action, rows in ACCOUNT_API.items()
        for actor, outcome in rows.items()
    ],
)
@ROLLBACK_DB
def test_api_account_route(world, actor, action, outcome):
    who = world[actor]
    client = who.http(APIClient)
    response = call_api(client, action, "", who)
    check_api(response, outcome, "public")
    if action == "GET /api/users/?prefix=gr" and outcome == OK:
        assert response.json() == [{"username": "grace"}]
    if action == "DELETE /api/auth/token/" and outcome == DONE:
        # The token is gone: presenting it again is refused, not anonymous.
        again = client.get("/api/rooms/")
        assert (again.status_code, again.json()) == (401, {"detail": "Invalid token."})


# --- pages -------------------------------------------------------------------------


def call_page(client: Client, action: str, slug: str) -> Any:
    if action == "GET /":
        return client.get("/")
    if action == "GET /rooms/<slug>/":
        return client.get(f"/rooms/{slug}/")
    assert action == "POST /rooms/new/ (this slug)"
    return client.post("/rooms/new/", {"name": "Copy", "slug": slug})


@pytest.mark.parametrize(("actor", "room", "action", "outcome"), cells(PAGES))
@ROLLBACK_DB
def test_page(world, actor, room, action, outcome):
    who, slug = world[actor], SLUG[room]
    response = call_page(who.http(), action, slug)
    status = int(outcome[:3])
    assert response.status_code == status, response.content[:500]
    if outcome in (LISTED, UNLISTED):
        linked = f'href="/rooms/{slug}/"' in response.content.decode()
        assert linked == (outcome == LISTED)
    elif outcome in (POSTS, READS):
        assert response.context["room"].slug == slug
        assert response.context["can_post"] == (outcome == POSTS)
        assert FIRST_WORDS in response.content.decode()
    elif outcome == TO_LOGIN:
        assert response["Location"].startswith("/accounts/login/")
    elif outcome == OPENED:
        assert response["Location"] == f"/rooms/{slug}/"
        assert Room.objects.get(slug=slug).owner.username == who.username
    elif outcome == TAKEN_FORM:
        assert response.context["form"].errors == {"slug": ["That slug is taken."]}
    if room != "private":
        return
    if outcome == NOT_FOUND:
        # Unknown and forbidden look the same, byte for byte.
        other = call_page(who.http(), action, SLUG["unknown"])
        assert (other.status_code, other.content) == (404, response.content)
        assert b"Secret" not in response.content
    elif outcome == TAKEN_FORM:
        other = call_page(who.http(), action, SLUG["public"])
        assert other.status_code == response.status_code
        assert other.context["form"].errors == response.context["form"].errors


# --- the rules themselves, where every surface checks twice ---------------------


@ROLLBACK_DB
def test_each_rule_answers_alone_for_visitors_and_public_rooms():
    """core.access's own answers, where a surface would also be refused by a
    second check (services.check_admission refuses public rooms; an
    anonymous visitor is never active): the rule must hold by itself."""
    from django.contrib.auth.models import AnonymousUser

    from core import access

    owner, member = UserFactory(username="olive"), UserFactory(username="mia")
    visitor = AnonymousUser()
    public = RoomFactory(slug="lobby", owner=owner)
    private = RoomFactory(slug="secret", is_private=True, owner=owner)
    ownerless = RoomFactory(slug="ownerless", is_private=True, owner=None)
    Membership.objects.create(room=private, user=owner)
    Membership.objects.create(room=private, user=member)

    assert [access.is_member(who, private) for who in (owner, member)] == [True, True]
    assert access.is_member(visitor, private) is False
    assert access.is_member(member, ownerless) is False
    assert access.can_manage_members(owner, private) is True
    # Public rooms have no members to manage, not even for their owner.
    assert access.can_manage_members(owner, public) is False
    # An anonymous visitor's pk is None, like an ownerless room's owner.
    assert access.can_manage_members(visitor, ownerless) is False
    assert access.can_manage_members(member, private) is False
    assert [access.can_read(visitor, room) for room in (public, private)] == [
        True,
        False,
    ]
    assert access.can_post(visitor, public) is False
    assert access.can_audit(visitor, ownerless) is False
    assert access.handshake_room(visitor, "secret") is None
    assert access.handshake_room(visitor, "lobby") == public
    assert access.handshake_room(member, "secret") == private


@ROLLBACK_DB
def test_what_a_user_may_find_and_post_is_read_as_they_stand_now():
    """``visible_rooms``, ``readable_messages`` and ``can_post_now`` by
    themselves: a deactivated member sees public rooms only; search finds
    messages, not the events that edit or delete them, and no deleted one;
    a user who may not write cannot post now, whatever the database says."""
    from django.contrib.auth.models import AnonymousUser

    from core import access

    owner, member = UserFactory(username="olive"), UserFactory(username="mia")
    public = RoomFactory(slug="lobby", owner=owner)
    private = private_room(owner, member)
    assert set(access.visible_rooms(member)) == {public, private}
    kept = services.store_message(
        room=public, author=owner, body="kept", client_id=None
    )
    gone = services.store_message(
        room=public, author=owner, body="gone", client_id=None
    )
    for target, body in ((kept, "kept, edited"), (gone, None)):
        services.store_change(
            room=public, actor=owner, seq=target.message["seq"], body=body,
            client_id=None,
        )  # fmt: skip
    found = access.readable_messages(member)
    assert [m.seq for m in found] == [kept.message["seq"]]

    member.is_active = False  # this copy; the database still says active
    assert list(access.visible_rooms(member)) == [public]
    assert access.can_post_now(member, public) is False
    assert access.can_post_now(AnonymousUser(), public) is False
    assert access.can_post_now(owner, public) is True


@ROLLBACK_DB
def test_the_post_right_is_one_rule_in_python_in_sql_and_where_messages_are_stored():
    """``access.can_post``, ``access.POST_RIGHT_SQL`` and the store path agree
    on every user x room (SQLite here; PostgreSQL, whose store path runs the
    SQL inside its one statement: tests/integration/test_services.py)."""
    from tests.unit import post_rights

    found = post_rights.outcomes("sqlite")
    for user, rooms in found.items():
        for room, answers in rooms.items():
            allowed = room in post_rights.EXPECTED[user]
            assert answers == [allowed] * 3, (user, room, answers)


@ROLLBACK_DB
def test_members_leave_private_rooms_and_owners_manage_them():
    """Who may end a membership (core.access), whoever asks: the owner of a
    private room removes others; a member leaves; the owner cannot leave."""
    from django.contrib.auth.models import AnonymousUser

    from core import access

    owner, member = UserFactory(username="olive"), UserFactory(username="mia")
    visitor = AnonymousUser()
    public = RoomFactory(slug="lobby", owner=owner)
    private = private_room(owner, member)

    assert access.can_remove_member(member, private, "mia") is True  # leaves
    assert access.can_remove_member(member, private, "olive") is False
    assert access.can_remove_member(owner, private, "mia") is True
    assert access.can_remove_member(owner, private, "olive") is False  # own room
    assert access.can_remove_member(owner, public, "mia") is False
    assert access.can_remove_member(member, public, "mia") is False
    # An anonymous visitor's username is "": naming it leaves nothing.
    assert access.can_remove_member(visitor, private, "") is False
    assert [access.can_leave(who, private) for who in (member, owner, visitor)] == [
        True,
        False,
        False,
    ]
    memberships = {m.user.username: m for m in Membership.objects.filter(room=private)}
    assert access.can_end_membership(memberships["mia"]) is True
    assert access.can_end_membership(memberships["olive"]) is False
    # A membership row in a public room (made public again, or the shell)
    # is not ended: the room admits everyone anyway.
    stray = Membership.objects.create(room=public, user=member)
    assert access.can_end_membership(stray) is False
    assert access.can_be_member(member, private) is True
    assert access.can_be_member(member, public) is False
    member.is_active = False
    assert access.can_be_member(member, private) is False
    assert access.is_signed_in(None) is False
    assert access.is_signed_in(visitor) is False
    assert access.can_write(member) is False  # this copy is deactivated
