"""Search on real PostgreSQL: who finds what, ranking, highlighted snippets,
and the GIN index the query uses; then the API on a live instance."""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration.conftest import Deployment, Launcher, create_room, http_json
from tests.support.services import manage

pytestmark = pytest.mark.integration

USERS = 2


def run(database_url: str, script: str) -> Any:
    """Run ``script`` with ``manage.py shell`` on the module's database; the
    JSON its last line prints."""
    env = {"DJANGO_SECRET_KEY": secrets.token_urlsafe(40), "DATABASE_URL": database_url}
    result = manage("shell", "-c", script, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_result_ever_comes_from_a_room_the_user_may_not_read(
    database_url: str,
) -> None:
    """tests/unit/search_matrix.py on PostgreSQL: the cells SQLite gives."""
    script = (
        "import json, secrets\n"
        "from tests.unit import search_matrix\n"
        "print(json.dumps(search_matrix.outcomes(secrets.token_hex(4))))\n"
    )
    from tests.unit import search_matrix

    assert run(database_url, script) == search_matrix.expected()


# A room of 20 000 filler messages (so the planner has a table worth an
# index), then three that match. Prints the hits, the index's definition and
# the plan of the search query as services.search sends it.
RANKING_SCRIPT = """
import json, secrets
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from core import services
from core.models import Room

tag = secrets.token_hex(4)
room = Room.objects.create(slug=f"rank-{tag}", name="Ranking")
with connection.cursor() as cursor:
    cursor.execute(
        "INSERT INTO core_message (room_id, seq, author_name, body, sent_at, kind,"
        " deleted) SELECT %s, n, 'filler', 'just some chatter number ' || n,"
        " now() - interval '1 day', 'message', false"
        " FROM generate_series(1, 20000) AS n",
        [room.pk],
    )
room.last_seq = 20000
room.save()
services.store_message(room=room, author=None, client_id=None,
    body="Zanzibar zanzibar ZANZIBAR: the trip is booked")
services.store_message(room=room, author=None, client_id=None,
    body="a much newer note that mentions zanzibars \\x02once\\x03")
services.store_message(room=room, author=None, client_id=None,
    body="unrelated")
services.store_message(room=room, author=None, client_id=None,
    body="start " + "filler " * 60 + "the marmalade is here. " + "tail " * 60)
with connection.cursor() as cursor:
    cursor.execute("ANALYZE core_message")
    cursor.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'message_body_search'"
    )
    (indexdef,) = cursor.fetchone()
with CaptureQueriesContext(connection) as queries:
    hits, more = services.search(
        user=AnonymousUser(),
        words=["zanzibar"], room=None, page=1, limit=10,
    )
ranked = queries.captured_queries[0]["sql"]
with connection.cursor() as cursor:
    cursor.execute("EXPLAIN " + ranked)
    plan = "\\n".join(row[0] for row in cursor.fetchall())
(long,), _ = services.search(
    user=AnonymousUser(), words=["marmalade"], room=None, page=1, limit=10
)
print(json.dumps({"hits": hits, "more": more, "indexdef": indexdef, "plan": plan,
    "long": long["snippet"]}))
"""


def test_postgresql_ranks_highlights_and_uses_the_gin_index(database_url: str) -> None:
    report = run(database_url, RANKING_SCRIPT)
    hits = report["hits"]
    # ts_rank: three occurrences outrank one, though the one is newer.
    assert [hit["snippet"] for hit in hits] == [
        [
            {"text": "Zanzibar", "match": True},
            {"text": " ", "match": False},
            {"text": "zanzibar", "match": True},
            {"text": " ", "match": False},
            {"text": "ZANZIBAR", "match": True},
            {"text": ": the trip is booked", "match": False},
        ],
        [
            # A prefix match marks the whole word; the body's own control
            # characters never pass for marks.
            {"text": "a much newer note that mentions ", "match": False},
            {"text": "zanzibars", "match": True},
            {"text": " once", "match": False},
        ],
    ]
    assert report["more"] is False
    # A long body: a fragment around the match, not the whole text.
    long = report["long"]
    assert [segment["text"] for segment in long if segment["match"]] == ["marmalade"]
    assert len("".join(segment["text"] for segment in long)) < 200
    indexdef = report["indexdef"]
    assert "USING gin (to_tsvector('simple'::regconfig" in indexdef
    assert "WHERE ((NOT deleted) AND ((kind)::text = 'message'::text))" in indexdef
    assert "message_body_search" in report["plan"], report["plan"]


def test_the_api_on_a_live_instance(
    module_launcher: Launcher, deployment: Deployment
) -> None:
    (app,) = module_launcher.launch("search")
    owner, other = deployment.usernames[:2]
    tokens = deployment.fetch_tokens(app)
    public = create_room(app, tokens[owner], f"pub-{secrets.token_hex(3)}")["slug"]
    hidden = create_room(
        app, tokens[owner], f"priv-{secrets.token_hex(3)}", private=True
    )["slug"]
    for slug, body in ((public, "Quokka spotted"), (hidden, "quokka secret")):
        status, answer = http_json(
            app,
            "POST",
            f"/api/rooms/{slug}/messages/",
            token=tokens[owner],
            body={"body": body},
        )
        assert status == 201, answer

    def rooms(token: str | None) -> list[str]:
        status, body = http_json(app, "GET", "/api/search/?q=quokka", token=token)
        assert status == 200, body
        return sorted(hit["room"] for hit in body["results"])

    assert rooms(tokens[owner]) == sorted([public, hidden])
    assert rooms(tokens[other]) == [public]
    assert rooms(None) == [public]
    status, body = http_json(
        app, "GET", f"/api/search/?q=quokka&room={hidden}", token=tokens[other]
    )
    assert (status, body) == (404, {"detail": "No such room."})
    status, body = http_json(app, "GET", f"/api/search/?q={quote('?!')}")
    assert status == 400
    assert list(body["errors"]) == ["q"]
