"""Integration tier fixtures: real redis-server, PostgreSQL and Daphne processes.

Fixtures start the services once (PostgreSQL and a shared Redis per session, a
migrated database per module) and every Daphne instance with an explicit
environment: the test process runs with REDIS_URL, DATABASE_URL and DJANGO_*
unset (pyproject's ``[tool.pytest_env]``). Tests talk to the instances as users
do: over HTTP with API tokens and over real WebSockets, with the harness's
clients (``harness.http``, ``harness.ws``); ``common.py`` has the rest.

A fixture skips only when a service binary is missing (``ServiceUnavailable``);
under SWITCHBOARD_REQUIRE_ALL_TIERS=1 that skip fails the run.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.app import AppProcess, ensure_users, manage
from harness.deployment import Deployment, Launcher
from harness.postgres import PostgresCluster
from harness.redis_server import RedisServer
from harness.ws import Clients
from tests.integration.common import (
    LOOPBACK_CROWD,
    PASSWORD,
    USERS_PER_MODULE,
    module_tag,
    throwaway_postgres,
    throwaway_redis,
)
from tests.support.server_settings import TEST_SERVER_SETTINGS

LOG_TAIL_LINES = 60

# Instances started by the fixtures below; a failing test shows their logs.
_live_instances: list[AppProcess] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> pytest.TestReport:
    """Attach the log tail of every live instance to a failing test."""
    report = yield
    if report.failed:
        for app in _live_instances:
            lines = app.log_text().splitlines()[-LOG_TAIL_LINES:]
            report.sections.append(
                (f"log of instance {app.name} (port {app.port})", "\n".join(lines))
            )
    return report


# --- services ---------------------------------------------------------------


@pytest.fixture(scope="session")
def run_id() -> str:
    """A short random id that keeps this run's names apart from others'."""
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster for the whole run."""
    yield from throwaway_postgres()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the module's own, for modules that stop and restart it."""
    yield from throwaway_redis()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The Redis most modules share; tests that stop Redis start their own."""
    yield from throwaway_redis()


@pytest.fixture(scope="session")
def migrated_templates() -> dict[Path, str]:
    """Per cluster (its directory), a database migrated once and never used.

    Each module's database is a copy (``CREATE DATABASE ... TEMPLATE``): a
    tenth of a second instead of a ``manage.py migrate`` of two or more.
    No test connects to a template, as PostgreSQL copies only unused ones.
    Per cluster, as a module may start its own (``test_services.py``).
    """
    return {}


def migrated_template(
    postgres: PostgresCluster, templates: dict[Path, str], run_id: str
) -> str:
    """The name of ``postgres``'s template database, migrated on first use."""
    if postgres.directory not in templates:
        name = f"sb_{run_id}_template"
        url = postgres.create_database(name)
        manage(
            "migrate",
            "--noinput",
            env={"DJANGO_SECRET_KEY": "migrate-only", "DATABASE_URL": url},
        )
        templates[postgres.directory] = name
    return templates[postgres.directory]


@pytest.fixture(scope="module")
def database_url(
    request: pytest.FixtureRequest,
    postgres: PostgresCluster,
    migrated_templates: dict[Path, str],
    run_id: str,
) -> str:
    """A fresh, migrated database for this module: a copy of the template."""
    template = migrated_template(postgres, migrated_templates, run_id)
    return postgres.create_database(
        f"sb_{run_id}_{module_tag(request)}", template=template
    )


@pytest.fixture(scope="module")
def deployment(
    request: pytest.FixtureRequest,
    database_url: str,
    redis_server: RedisServer,
    run_id: str,
) -> Deployment:
    """The module's environment (shared Redis) and its users."""
    tag = module_tag(request)
    env = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "DJANGO_DEBUG": "0",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        # Channel layer, presence and cache keys of this run and module only.
        "SWITCHBOARD_CHANNEL_PREFIX": f"sbtest-{run_id}-{tag}",
        # Every test client comes from 127.0.0.1: the per-address limits are
        # raised here, and the tests of those limits set their own.
        **LOOPBACK_CROWD,
        # Production's settings with a cheap password hasher, for the
        # instances and ensure_user alike (tests/support/server_settings.py).
        **TEST_SERVER_SETTINGS,
    }
    # A module may ask for fewer (``USERS = n``): each costs a password hash.
    count = getattr(request.module, "USERS", USERS_PER_MODULE)
    usernames = [f"{tag[:20]}-user{n}" for n in range(count)]
    ensure_users(env, usernames, PASSWORD)
    return Deployment(env, usernames=usernames, password=PASSWORD, name=tag)


@pytest.fixture(scope="module")
def module_launcher(deployment: Deployment) -> Iterator[Launcher]:
    """Instances that live as long as the module."""
    launcher = Launcher(deployment, watch=_live_instances)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def launcher(deployment: Deployment) -> Iterator[Launcher]:
    """Instances of one test (those it kills, restarts or reconfigures)."""
    launcher = Launcher(deployment, watch=_live_instances)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
async def clients() -> Any:
    """Open WebSocket clients; closed at the end of the test."""
    opened = Clients()
    try:
        yield opened
    finally:
        await opened.close()
