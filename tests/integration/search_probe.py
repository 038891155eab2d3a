"""What test_search.py runs inside Django on the module's PostgreSQL (via
``manage.py shell``): the search matrix, and a ranking report. Never
imported by the server."""

import json
import secrets

from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core import services
from core.models import Room
from tests.unit import search_matrix


def print_matrix_outcomes() -> None:
    """tests/unit/search_matrix.py's cells, as JSON."""
    print(json.dumps(search_matrix.outcomes(secrets.token_hex(4))))


def print_ranking_report() -> None:
    """A room of 20 000 filler messages (so the planner has a table worth an
    index), then a few that match. Prints the hits, the index's definition
    and the plan of the search query as services.search sends it."""
    tag = secrets.token_hex(4)
    room, _ = services.ensure_room(slug=f"rank-{tag}", name="Ranking")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO core_message (room_id, seq, author_name, body, sent_at, kind,"
            " deleted) SELECT %s, n, 'filler', 'just some chatter number ' || n,"
            " now() - interval '1 day', 'message', false"
            " FROM generate_series(1, 20000) AS n",
            [room.pk],
        )
    # The filler went past the store's seq counter, as a bulk import would.
    Room.objects.filter(pk=room.pk).update(last_seq=20000)
    room.refresh_from_db()
    services.store_message(
        room=room,
        author=None,
        client_id=None,
        body="Zanzibar zanzibar ZANZIBAR: the trip is booked",
    )
    services.store_message(
        room=room,
        author=None,
        client_id=None,
        body="a much newer note that mentions zanzibars \x02once\x03",
    )
    services.store_message(room=room, author=None, client_id=None, body="unrelated")
    services.store_message(
        room=room,
        author=None,
        client_id=None,
        body="start " + "filler " * 60 + "the marmalade is here. " + "tail " * 60,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE core_message")
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'message_body_search'"
        )
        (indexdef,) = cursor.fetchone()
    with CaptureQueriesContext(connection) as queries:
        hits, more = services.search(
            user=AnonymousUser(),
            words=["zanzibar"],
            room=None,
            page=1,
            limit=10,
        )
    ranked = queries.captured_queries[0]["sql"]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + ranked)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    (long,), _ = services.search(
        user=AnonymousUser(), words=["marmalade"], room=None, page=1, limit=10
    )
    print(
        json.dumps(
            {
                "hits": hits,
                "more": more,
                "indexdef": indexdef,
                "plan": plan,
                "long": long["snippet"],
            }
        )
    )
