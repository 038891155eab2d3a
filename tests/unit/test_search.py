"""Search (issue 18, point 4) on SQLite: who finds what, the fallback's
ranking and snippets, the API's pages and refusals, and the index's
expression. PostgreSQL's ranking, headlines and index use are in
tests/integration/test_search.py."""

import secrets
from datetime import timedelta
from importlib import import_module

import pytest
from django.contrib.postgres.search import SearchVector
from django.db.models import Q
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core import services
from core.models import Message, Room
from tests.factories import RoomFactory, UserFactory, private_room
from tests.unit import search_matrix

pytestmark = pytest.mark.django_db

SEARCH = "/api/search/"
HIT_FIELDS = {"room", "room_name", "seq", "author", "sent_at", "snippet"}


def client_for(user: object | None = None) -> APIClient:
    client = APIClient()
    if user is not None:
        key = Token.objects.get_or_create(user=user)[0].key
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def post(room: Room, body: str, author: object = None) -> int:
    result = services.store_message(room=room, author=author, body=body, client_id=None)
    return result.message["seq"]


def texts(hit: dict) -> str:
    return "".join(segment["text"] for segment in hit["snippet"])


def marked(hit: dict) -> list[str]:
    return [segment["text"] for segment in hit["snippet"] if segment["match"]]


# --- who finds what -----------------------------------------------------------------


def test_no_result_ever_comes_from_a_room_the_user_may_not_read():
    """tests/unit/search_matrix.py: users x rooms, removed and deactivated
    members, a deleted message and an edited one (also on PostgreSQL)."""
    assert search_matrix.outcomes(secrets.token_hex(4)) == search_matrix.expected()


def test_a_signed_in_member_finds_private_messages_that_anonymous_visitors_do_not():
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    lobby = RoomFactory(slug="lobby")
    ops = private_room(alice, slug="ops")
    post(lobby, "release notes are out", alice)
    post(ops, "release key is in the vault", alice)

    def rooms(client: APIClient) -> list[str]:
        response = client.get(SEARCH, {"q": "release"})
        assert response.status_code == 200, response.content
        return sorted(hit["room"] for hit in response.json()["results"])

    assert rooms(client_for()) == ["lobby"]
    assert rooms(client_for(bob)) == ["lobby"]
    assert rooms(client_for(alice)) == ["lobby", "ops"]
    # The room filter names a room the caller cannot read: 404, as for none.
    hidden = client_for(bob).get(SEARCH, {"q": "release", "room": "ops"})
    missing = client_for(bob).get(SEARCH, {"q": "release", "room": "nowhere"})
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json() == {"detail": "No such room."}


def test_a_row_marked_deleted_is_never_found_even_with_its_text():
    """Deleting erases the text too; the filter holds even if it did not."""
    room = RoomFactory(slug="lobby")
    seq = post(room, "needle kept")
    Message.objects.filter(room=room, seq=seq).update(deleted=True)
    hits, _ = services.search(
        user=UserFactory(), words=["needle"], room=None, page=1, limit=10
    )
    assert hits == []


# --- matching, ranking and snippets (the SQLite fallback) --------------------------


def test_each_word_matches_the_start_of_a_word_whatever_its_case():
    room = RoomFactory(slug="lobby")
    post(room, "We DEPLOYED the café fix")
    post(room, "redeploy nothing")  # "deploy" inside a word: no match
    post(room, "snake_case deploy_script")  # "_" separates words
    hits, more = services.search(
        user=UserFactory(), words=["deploy"], room=None, page=1, limit=10
    )
    assert [texts(hit) for hit in hits] == [
        "snake_case deploy_script",
        "We DEPLOYED the café fix",
    ]
    assert more is False
    assert marked(hits[1]) == ["DEPLOYED"]
    hits, _ = services.search(
        user=UserFactory(), words=["caf", "fix"], room=None, page=1, limit=10
    )
    assert [marked(hit) for hit in hits] == [["café", "fix"]]


def test_every_word_must_match():
    room = RoomFactory(slug="lobby")
    post(room, "deploy at five")
    post(room, "deploy at six")
    hits, _ = services.search(
        user=UserFactory(), words=["deploy", "six"], room=None, page=1, limit=10
    )
    assert [texts(hit) for hit in hits] == ["deploy at six"]


def test_sqlite_ranks_by_recency_newest_first():
    room = RoomFactory(slug="lobby")
    now = timezone.now()
    seqs = [post(room, f"needle {n}") for n in range(3)]
    # Sent in the order 1, 0, 2 (sent_at, not seq, decides).
    for seq, minutes in zip(seqs, (-5, -1, -10), strict=True):
        Message.objects.filter(room=room, seq=seq).update(
            sent_at=now + timedelta(minutes=minutes)
        )
    hits, _ = services.search(
        user=UserFactory(), words=["needle"], room=None, page=1, limit=10
    )
    assert [hit["seq"] for hit in hits] == [seqs[1], seqs[0], seqs[2]]


def test_a_hit_says_where_who_and_when():
    alice = UserFactory(username="alice")
    room = RoomFactory(slug="lobby", name="The Lobby")
    seq = post(room, "hello world", alice)
    (hit,), _ = services.search(
        user=alice, words=["hello"], room=None, page=1, limit=10
    )
    stored = Message.objects.get(room=room, seq=seq)
    assert hit == {
        "room": "lobby",
        "room_name": "The Lobby",
        "seq": seq,
        "author": "alice",
        "sent_at": stored.sent_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "snippet": [
            {"text": "hello", "match": True},
            {"text": " world", "match": False},
        ],
    }


def test_a_long_body_is_cut_around_its_first_match_with_ellipses():
    body = "filler " * 60 + "the needle is here " + "tail " * 60
    segments = services.snippet(body, ["needle"])
    text = "".join(segment["text"] for segment in segments)
    assert text.startswith("…")
    assert text.endswith("…")
    assert len(text) <= services.SNIPPET_CHARS + 2
    assert [s["text"] for s in segments if s["match"]] == ["needle"]
    # Cut between words, not inside one.
    assert text.startswith("…filler ")
    assert text.endswith(" tail…")


def test_snippet_segments_are_plain_text_and_adjacent_ones_merge():
    hostile = "<b>needle</b> & NEEDLES"
    assert services.snippet(hostile, ["needle"]) == [
        {"text": "<b>", "match": False},
        {"text": "needle", "match": True},
        {"text": "</b> & ", "match": False},
        {"text": "NEEDLES", "match": True},
    ]


def test_a_postgresql_headline_splits_into_segments():
    # As ts_headline marks matches (core.services.MATCH_START, MATCH_STOP).
    assert services._split_headline("a \x02b\x03\x02c\x03 d") == [
        {"text": "a ", "match": False},
        {"text": "bc", "match": True},
        {"text": " d", "match": False},
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Deploy deploy DEPLOY", ["deploy"]),
        ("  what's up?! ", ["what", "s", "up"]),
        ("über straße 42", ["über", "straße", "42"]),
        ("a_b", ["a", "b"]),
        ("cafe\u0301", ["café"]),  # decomposed, as some keyboards send it
    ],
)
def test_search_words(text, words):
    assert services.search_words(text) == words


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one word"),
        ("?! -- ...", "at least one word"),
        ("a b c d e f g h i", "at most 8 words"),
        ("x" * 201, "at most 200 characters"),
    ],
)
def test_bad_searches_are_refused(text, message):
    with pytest.raises(services.InvalidSearch, match=message):
        services.search_words(text)


# --- the API ----------------------------------------------------------------------


def test_pages_follow_the_link_header_until_has_more_is_false():
    room = RoomFactory(slug="lobby")
    for n in range(5):
        post(room, f"needle {n}")
    client = client_for()
    response = client.get(SEARCH, {"q": "needle", "limit": 2})
    seen = []
    while True:
        assert response.status_code == 200, response.content
        page = response.json()
        assert set(page) == {"results", "has_more"}
        assert all(set(hit) == HIT_FIELDS for hit in page["results"])
        seen += [hit["seq"] for hit in page["results"]]
        if not page["has_more"]:
            assert "Link" not in response
            break
        link = response["Link"]
        assert link.endswith('>; rel="next"')
        response = client.get(link[1 : link.index(">")])
    assert seen == [5, 4, 3, 2, 1]


def test_the_deepest_page_says_no_more():
    room = RoomFactory(slug="lobby")
    for n in range(services.SEARCH_MAX_PAGE + 1):
        post(room, f"needle {n}")
    last = client_for().get(
        SEARCH, {"q": "needle", "limit": 1, "page": services.SEARCH_MAX_PAGE}
    )
    assert last.status_code == 200
    assert last.json()["has_more"] is False
    assert "Link" not in last


def test_the_room_filter_keeps_to_one_room():
    lobby, other = RoomFactory(slug="lobby"), RoomFactory(slug="other")
    post(lobby, "needle")
    post(other, "needle")
    response = client_for().get(SEARCH, {"q": "needle", "room": "other"})
    assert [hit["room"] for hit in response.json()["results"]] == ["other"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "!!!"}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "a b c d e f g h i"}, "q"),
        ({"q": "hi", "page": "0"}, "page"),
        ({"q": "hi", "page": "21"}, "page"),
        ({"q": "hi", "page": "two"}, "page"),
        ({"q": "hi", "page": "-1"}, "page"),
        ({"q": "hi", "page": "\uff11"}, "page"),  # a full-width digit one
        ({"q": "hi", "limit": "51"}, "limit"),
        ({"q": "hi", "room": "Not A Slug"}, "room"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(params, field):
    response = client_for().get(SEARCH, params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["detail"] == "Invalid input."
    assert list(body["errors"]) == [field]


def test_empty_page_and_limit_count_as_absent():
    RoomFactory(slug="lobby")
    response = client_for().get(SEARCH, {"q": "hi", "page": "", "limit": ""})
    assert response.status_code == 200
    assert response.json() == {"results": [], "has_more": False}


def test_searches_are_rate_limited_per_user_with_retry_after(settings):
    settings.SEARCH_BURST = 2
    settings.SEARCH_RATE_PER_SECOND = 0.001
    RoomFactory(slug="lobby")
    alice = client_for(UserFactory(username="alice"))
    assert [alice.get(SEARCH, {"q": "hi"}).status_code for _ in range(2)] == [200] * 2
    refused = alice.get(SEARCH, {"q": "hi"})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    assert refused.json()["retry_after_ms"] >= 1
    assert "searches" in refused.json()["detail"]
    # Bad input spends nothing and still gets its 400.
    assert alice.get(SEARCH, {"q": "!"}).status_code == 400
    # Another user has a budget of their own.
    assert client_for(UserFactory()).get(SEARCH, {"q": "hi"}).status_code == 200


def test_an_invalid_token_is_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token nope")
    assert client.get(SEARCH, {"q": "hi"}).status_code == 401


def test_the_openapi_document_describes_search():
    document = APIClient().get("/api/schema/", {"format": "json"}).json()
    operation = document["paths"]["/api/search/"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert {"q", "room", "page", "limit"} <= set(parameters)
    assert parameters["q"]["required"] is True
    assert {"200", "400", "401", "404", "429"} <= set(operation["responses"])


# --- the index -----------------------------------------------------------------------


def test_the_index_is_over_the_expression_search_uses():
    """PostgreSQL uses an expression index only for that very expression,
    and a partial one only where the query implies its condition."""
    migration = import_module("core.migrations.0004_message_search_index")
    (expression,) = migration.INDEX.expressions
    assert expression == services.search_vector()
    assert expression == SearchVector("body", config=services.SEARCH_CONFIG)
    assert migration.INDEX.condition == Q(kind="message", deleted=False)
    where = str(services.access.readable_messages(UserFactory()).query)
    assert '"core_message"."kind" = message' in where
    assert 'NOT "core_message"."deleted"' in where


# --- the room page opened at a result --------------------------------------------


def initial_of(response) -> dict:
    assert response.status_code == 200, response.content[:300]
    return response.context["initial"]


def test_the_room_page_opens_around_the_message_a_result_names(client):
    room = RoomFactory(slug="lobby")
    for n in range(1, 101):
        post(room, f"m{n}")
    initial = initial_of(client.get("/rooms/lobby/", {"at": "30"}))
    assert initial["at"] == 30
    assert [m["seq"] for m in initial["messages"]] == list(range(6, 56))
    assert initial["has_more"] is True
    # Near the start, the page starts at the room's first message.
    initial = initial_of(client.get("/rooms/lobby/", {"at": "3"}))
    assert [m["seq"] for m in initial["messages"]] == list(range(1, 29))
    assert initial["has_more"] is False


@pytest.mark.parametrize("at", ["", "x", "0", "-1", "101", str(2**63 - 1), "9" * 30])
def test_a_bad_or_unknown_at_opens_the_latest_messages(client, at):
    room = RoomFactory(slug="lobby")
    for n in range(1, 101):
        post(room, f"m{n}")
    initial = initial_of(client.get("/rooms/lobby/", {"at": at}))
    assert initial["at"] is None
    assert [m["seq"] for m in initial["messages"]] == list(range(51, 101))


def test_at_opens_no_room_the_visitor_may_not_read(client):
    room = private_room(UserFactory(username="olive"), slug="ops")
    post(room, "secret")
    assert client.get("/rooms/ops/", {"at": "1"}).status_code == 404
