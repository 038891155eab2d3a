"""One slow statement does not stall the other connections of a process.

A transaction of the test's own holds a room's row lock, so every post to
that room blocks in PostgreSQL, exactly as a slow query or a long lock
would. Posts to other rooms on the same instance must be acknowledged as
usual; the blocked post ends at the statement timeout with an error its
client may retry, and the retry is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import psycopg
import pytest

from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room, request
from harness.postgres import PostgresCluster
from harness.waiting import async_wait_until
from harness.ws import Clients, WsClient
from soak.checks import scan_log
from tests.integration.common import report, unique_slug

pytestmark = pytest.mark.integration

USERS = 6
DB_THREADS = 2
STATEMENT_TIMEOUT_MS = 3000
HTTP_CONCURRENCY = 2
HTTP_QUEUE_SECONDS = 0.5
ENV = {
    "SWITCHBOARD_DB_THREADS": str(DB_THREADS),
    "SWITCHBOARD_DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
    "SWITCHBOARD_HTTP_CONCURRENCY": str(HTTP_CONCURRENCY),
    "SWITCHBOARD_HTTP_QUEUE_SECONDS": str(HTTP_QUEUE_SECONDS),
}
# What "not delayed" means on a shared 2-core machine: far below the
# statement timeout that a stalled process would show.
PROMPT_ACK_SECONDS = 1.0


@pytest.fixture(scope="module")
def app(module_launcher: Launcher, deployment: Deployment) -> AppProcess:
    (instance,) = module_launcher.launch("slow-db", env=ENV)
    deployment.fetch_tokens(instance)
    return instance


@contextlib.contextmanager
def room_locked(
    postgres: PostgresCluster, deployment: Deployment, slug: str
) -> Iterator[None]:
    """Hold ``slug``'s row lock in a transaction of our own until exit."""
    database = deployment.env["DATABASE_URL"].rsplit("/", 1)[-1]
    with psycopg.connect(postgres.url(database)) as conn, conn.transaction():
        conn.execute("SELECT 1 FROM core_room WHERE slug = %s FOR UPDATE", (slug,))
        yield


def posts_waiting_on_locks(postgres: PostgresCluster, deployment: Deployment) -> int:
    database = deployment.env["DATABASE_URL"].rsplit("/", 1)[-1]
    with postgres.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
    return int(row[0])


async def blocked(postgres: PostgresCluster, deployment: Deployment, n: int) -> None:
    """Wait until ``n`` statements wait on a lock in PostgreSQL."""
    await async_wait_until(
        lambda: posts_waiting_on_locks(postgres, deployment) >= n,
        timeout=10,
        message=f"{n} posts waiting on the lock",
    )


async def timed_send(client: WsClient, body: str) -> float:
    started = time.monotonic()
    await client.send_message(body, timeout=STATEMENT_TIMEOUT_MS / 1000 + 5)
    return time.monotonic() - started


async def test_a_blocked_post_does_not_delay_other_rooms(
    app: AppProcess, postgres: PostgresCluster, deployment: Deployment,
    clients: Clients,
) -> None:  # fmt: skip
    tokens, names = deployment.tokens, deployment.usernames
    stuck_slug, other_slug = unique_slug("locked"), unique_slug("free")
    for slug in (stuck_slug, other_slug):
        create_room(app, tokens[names[0]], slug)
    stuck = await clients.open(app, stuck_slug, token=tokens[names[1]], name="stuck")
    others = [
        await clients.open(app, other_slug, token=tokens[name], name=name)
        for name in names[2:5]
    ]

    with room_locked(postgres, deployment, stuck_slug):
        client_id = await stuck.post("waits on the lock")
        await blocked(postgres, deployment, 1)
        waits = [await timed_send(o, f"while {stuck_slug} is locked") for o in others]
        assert max(waits) < PROMPT_ACK_SECONDS, waits
        error = await stuck.wait_for(
            lambda: stuck.error_for(client_id), STATEMENT_TIMEOUT_MS / 1000 + 5,
            "the blocked post's error",
        )  # fmt: skip
    assert error["code"] == "internal_error"

    # The client retries, as the protocol says: stored once, acknowledged.
    await stuck.send({"type": "send", "body": "waits on the lock",
                      "client_id": client_id})  # fmt: skip
    await stuck.wait_for(lambda: client_id in stuck.acks, 10, "the retry's ack")
    assert stuck.acks[client_id] == 1
    report(
        "one post blocked on a row lock",
        {"other_rooms_ack_s": [f"{w:.3f}" for w in waits],
         "blocked_post_error": error["code"]},
    )  # fmt: skip


async def test_with_every_database_thread_blocked_a_post_waits_at_most_the_timeout(
    app: AppProcess, postgres: PostgresCluster, deployment: Deployment,
    clients: Clients,
) -> None:  # fmt: skip
    """DB_THREADS posts blocked at once hold every database thread: a post
    to another room waits for one, but no longer than the statement
    timeout (docs/deploy.md, "Database connections")."""
    tokens, names = deployment.tokens, deployment.usernames
    stuck_slug, other_slug = unique_slug("locked"), unique_slug("free")
    for slug in (stuck_slug, other_slug):
        create_room(app, tokens[names[0]], slug)
    stuck = [
        await clients.open(app, stuck_slug, token=tokens[name], name=name)
        for name in names[1 : 1 + DB_THREADS]
    ]
    other = await clients.open(app, other_slug, token=tokens[names[5]], name="other")

    with room_locked(postgres, deployment, stuck_slug):
        for client in stuck:
            await client.post("waits on the lock")
        await blocked(postgres, deployment, DB_THREADS)
        waited = await timed_send(other, "behind the blocked posts")
    report(
        "every database thread blocked",
        {"other_room_ack_s": f"{waited:.2f}",
         "statement_timeout_s": STATEMENT_TIMEOUT_MS / 1000},
    )  # fmt: skip
    assert waited < STATEMENT_TIMEOUT_MS / 1000 + PROMPT_ACK_SECONDS


def get(
    app: AppProcess, path: str, *, method: str = "GET", headers: dict | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], float, bytes]:  # fmt: skip
    """One request: status, headers, seconds taken and the body."""
    response = request(app, method, path, body=body, headers=headers or {})
    return (
        response.status, dict(response.headers.items()), response.elapsed,
        response.body,
    )  # fmt: skip


async def test_http_requests_past_the_bound_wait_briefly_then_get_503(
    app: AppProcess, postgres: PostgresCluster, deployment: Deployment
) -> None:
    """HTTP_CONCURRENCY requests stuck in Django hold every turn: the next
    waits HTTP_QUEUE_SECONDS and gets 503 with Retry-After instead of a
    thread of its own; /healthz answers at once throughout; the stuck
    requests finish once the lock goes."""
    token = deployment.tokens[deployment.usernames[0]]
    slug = unique_slug("locked-http")
    create_room(app, token, slug)
    with room_locked(postgres, deployment, slug):
        path = f"/api/rooms/{slug}/messages/"
        stuck = [
            asyncio.create_task(
                ahttp_json(app, "POST", path, token=token, body={"body": f"#{n}"})
            )
            for n in range(HTTP_CONCURRENCY)
        ]
        await blocked(postgres, deployment, HTTP_CONCURRENCY)
        status, headers, waited, _ = await asyncio.to_thread(get, app, "/api/rooms/")
        health, _, health_s, _ = await asyncio.to_thread(get, app, "/healthz")
    assert (status, headers.get("Retry-After")) == (503, "1"), (status, headers)
    assert HTTP_QUEUE_SECONDS <= waited < HTTP_QUEUE_SECONDS + 1, waited
    assert health == 200
    assert health_s < 0.5, health_s
    assert [status for status, _ in await asyncio.gather(*stuck)] == [201, 201]
    status, _, _, _ = await asyncio.to_thread(get, app, "/api/rooms/")
    assert status == 200
    report(
        "HTTP past its bound",
        {"refused_after_s": f"{waited:.2f}", "healthz_s": f"{health_s:.3f}"},
    )


async def test_an_api_post_past_the_statement_timeout_gets_503_and_its_retry_201(
    app: AppProcess, postgres: PostgresCluster, deployment: Deployment
) -> None:
    """A post blocked past the statement timeout stored nothing and may be
    retried: 503 with Retry-After and a JSON detail, a WARNING and no ERROR
    in the log; the retry with the same client_id is stored once."""
    token = deployment.tokens[deployment.usernames[0]]
    slug = unique_slug("timeout-http")
    create_room(app, token, slug)
    path = f"/api/rooms/{slug}/messages/"
    post = {
        "method": "POST",
        "headers": {"Authorization": f"Token {token}",
                    "Content-Type": "application/json"},
        "body": json.dumps({"body": "past the timeout", "client_id": "t-1"}).encode(),
    }  # fmt: skip
    log_start = len(app.log_text())
    with room_locked(postgres, deployment, slug):
        status, headers, waited, content = await asyncio.to_thread(
            get, app, path, **post
        )
    assert (status, headers.get("Retry-After")) == (503, "1"), (status, content)
    assert headers["Content-Type"] == "application/json"
    assert json.loads(content) == {
        "detail": "The database is unavailable for a moment. Try again shortly.",
        "retry_after_ms": 1000,
    }
    assert STATEMENT_TIMEOUT_MS / 1000 <= waited < STATEMENT_TIMEOUT_MS / 1000 + 2
    logged = scan_log(app.log_text()[log_start:])
    assert (logged["error_lines"], logged["tracebacks"]) == (0, 0), logged
    assert logged["warnings_by_logger"].get("core.middleware") == 1, logged

    status, _, _, content = await asyncio.to_thread(get, app, path, **post)
    assert status == 201, content
    again, _, _, _ = await asyncio.to_thread(get, app, path, **post)
    assert again == 200  # a repeat of the stored one
    status, body = await ahttp_json(app, "GET", path, token=token)
    assert [m["body"] for m in body["messages"]] == ["past the timeout"]
    report(
        "API post past the statement timeout", {"answered_503_after_s": f"{waited:.2f}"}
    )
