"""Search on real PostgreSQL: who finds what, ranking, highlighted snippets,
and the GIN index the query uses; then the API on a live instance."""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote

import pytest

from harness.app import manage
from harness.deployment import Deployment, Launcher
from harness.http import create_room, http_json

pytestmark = pytest.mark.integration

USERS = 2


def run(database_url: str, script: str) -> Any:
    """Run ``script`` (a call into tests/integration/search_probe.py, which
    needs Django in the process) with ``manage.py shell`` on the module's
    database; the JSON its last line prints."""
    env = {"DJANGO_SECRET_KEY": secrets.token_urlsafe(40), "DATABASE_URL": database_url}
    result = manage("shell", "-c", script, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_result_ever_comes_from_a_room_the_user_may_not_read(
    database_url: str,
) -> None:
    """tests/unit/search_matrix.py on PostgreSQL: the cells SQLite gives."""
    script = (
        "from tests.integration import search_probe\n"
        "search_probe.print_matrix_outcomes()\n"
    )
    from tests.unit import search_matrix

    assert run(database_url, script) == search_matrix.expected()


def test_postgresql_ranks_highlights_and_uses_the_gin_index(database_url: str) -> None:
    report = run(
        database_url,
        "from tests.integration import search_probe\n"
        "search_probe.print_ranking_report()\n",
    )
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
