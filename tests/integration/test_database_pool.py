"""Each process reuses a small pool of PostgreSQL connections.

Without the pool Django opens a connection for every request and every
``database_sync_to_async`` call; ``pg_stat_database.sessions`` counts every
connection the server accepted, so it tells reuse from churn.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room, http_json
from harness.postgres import PostgresCluster
from harness.waiting import async_wait_until, wait_until
from harness.ws import Clients
from tests.integration.common import unique_slug

pytestmark = pytest.mark.integration

USERS = 2
POOL_SIZE = 3
ENV = {"SWITCHBOARD_DB_POOL_SIZE": str(POOL_SIZE), "SWITCHBOARD_SEND_BURST": "100"}


def database_name(deployment: Deployment) -> str:
    return deployment.env["DATABASE_URL"].rsplit("/", 1)[-1]


def sessions_opened(postgres: PostgresCluster, database: str) -> int:
    """Connections PostgreSQL has accepted into ``database`` so far."""
    with postgres.connect() as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def app_connections(postgres: PostgresCluster, database: str) -> list[int]:
    """Backend pids of the app's open connections to ``database``."""
    with postgres.connect() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s"
            " AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [row[0] for row in rows]


@pytest.fixture(scope="module")
def app(module_launcher: Launcher) -> AppProcess:
    (app,) = module_launcher.launch("pooled", env=ENV)
    return app


@pytest.fixture
def room(app: AppProcess, deployment: Deployment) -> tuple[str, str]:
    """A new room of this test: (slug, its owner's token)."""
    owner = deployment.fetch_tokens(app)[deployment.usernames[0]]
    slug = unique_slug("pool")
    create_room(app, owner, slug)
    return slug, owner


async def test_requests_and_messages_reuse_a_bounded_pool(
    app: AppProcess,
    room: tuple[str, str],
    deployment: Deployment,
    postgres: PostgresCluster,
    clients: Clients,
) -> None:
    slug, owner = room
    database = database_name(deployment)
    before = sessions_opened(postgres, database)

    # 40 API reads, 8 at a time, and 40 WebSocket messages stored.
    def read_room(_: int) -> int:
        return http_json(app, "GET", f"/api/rooms/{slug}/messages/", token=owner)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(read_room, range(40)))
    assert statuses == [200] * 40
    writer = await clients.open(app, slug, token=owner, name="writer")
    await writer.publish([f"message {n}" for n in range(40)])

    opened = sessions_opened(postgres, database) - before
    assert opened <= POOL_SIZE, f"{opened} connections opened for 81 database uses"
    assert len(app_connections(postgres, database)) <= POOL_SIZE


async def test_connections_dropped_by_the_server_are_replaced_unseen(
    app: AppProcess,
    room: tuple[str, str],
    deployment: Deployment,
    postgres: PostgresCluster,
    clients: Clients,
) -> None:
    slug, owner = room
    writer = await clients.open(app, slug, token=owner, name="writer")
    assert await writer.send_message("before") == 1
    database = database_name(deployment)
    pooled = app_connections(postgres, database)
    assert pooled, "the pool keeps connections open between uses"

    # What a managed database failover or restart does to idle connections.
    with postgres.connect() as conn:
        for pid in pooled:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    await async_wait_until(
        lambda: not set(pooled) & set(app_connections(postgres, database)),
        timeout=10,
        message="the terminated backends to exit",
    )

    # The next uses get fresh connections, not errors.
    assert await writer.send_message("after") == 2
    status, body = await ahttp_json(
        app, "GET", f"/api/rooms/{slug}/messages/", token=owner
    )
    assert status == 200, body
    assert [m["body"] for m in body["messages"]] == ["before", "after"]
    assert not writer.errors()


def test_pool_size_zero_opens_a_connection_per_use(
    launcher: Launcher, deployment: Deployment, postgres: PostgresCluster
) -> None:
    """The switch the docs offer for an external pooler; also shows that the
    first test's bound is the pool's doing.
    """
    (app,) = launcher.launch("unpooled", env={"SWITCHBOARD_DB_POOL_SIZE": "0"})
    token = deployment.fetch_tokens(app)[deployment.usernames[1]]
    database = database_name(deployment)
    before = sessions_opened(postgres, database)
    for _ in range(10):
        assert http_json(app, "GET", "/api/rooms/", token=token)[0] == 200
    # A backend adds its session to the statistics when it exits.
    wait_until(
        lambda: sessions_opened(postgres, database) - before >= 10,
        timeout=10,
        message="a connection per request",
    )
