"""Browser tier: Playwright's sync API drives headless Chromium at real Daphne.

Servers are real processes (``harness.app.AppProcess``) on a
temporary SQLite database; see ``deployment.py``. Pages are opened per user
and per server URL, so a test can put each user on a different instance.
Every page's console errors and uncaught exceptions fail the test unless
the test allows them (a server restart makes Chromium log refused
connections, which is expected there).
"""

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from harness.deployment import Deployment
from harness.postgres import PostgresCluster
from harness.process import ServiceUnavailable
from harness.redis_server import RedisServer
from tests.browser.browsing import Browsing
from tests.browser.deployment import (
    make_sqlite_template,
    on_sqlite,
    prepare_database,
    shared_database,
)

CHROMIUM_ARGS = [
    "--no-sandbox",  # as root in a container; the page is our own app
    "--disable-background-networking",
    "--disable-gpu",
]


def _chromium_path() -> str:
    """Debian's Chromium; Playwright's own browser download is not used.

    Missing, the tier skips with one line naming the package, as the other
    tiers do (CI turns skips into failures: SWITCHBOARD_REQUIRE_ALL_TIERS).
    """
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("the browser tier needs Chromium: apt-get install -y chromium")
    return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Keep each phase's report on the item, for failure-only teardown work."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


# --- browser -------------------------------------------------------------------


# Package scope: Playwright's sync API runs an asyncio event loop in the
# test thread while it lives, and Django refuses ORM calls where a loop runs
# (SynchronousOnlyOperation). It stops with this tier, so the tiers that run
# after it keep Django's guard on, with no DJANGO_ALLOW_ASYNC_UNSAFE anywhere.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=_chromium_path(), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


# --- servers ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def shared_services() -> Iterator[tuple[str, str]]:
    """A throwaway PostgreSQL database and Redis, as App Platform's instances share."""
    try:
        postgres = PostgresCluster().start()
        redis = RedisServer().start()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    try:
        database_url = postgres.create_database("browser")
        prepare_database(database_url)
        yield database_url, redis.url
    finally:
        redis.close()
        postgres.close()


@pytest.fixture(scope="session", params=["sqlite-inmemory", "redis-postgres-2"])
def deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> Iterator[Deployment]:
    """The app as a chat test sees it; ``url(0)``, ``url(1)`` per user.

    ``sqlite-inmemory``: one instance on SQLite with the in-memory layer, as
    ``make run`` serves it. ``redis-postgres-2``: two instances sharing Redis
    and PostgreSQL, as App Platform runs them; ``url(0)`` and ``url(1)`` are
    different instances, so users chat across instances.
    """
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite-inmemory":
        app = on_sqlite(directory, sqlite_template, count=1)
    else:
        database_url, redis_url = request.getfixturevalue("shared_services")
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SWITCHBOARD_CHANNEL_PREFIX": f"browser-{uuid.uuid4().hex[:8]}",
        }
        app = shared_database(directory, env, count=2)
    try:
        yield app.start()
    finally:
        app.close()


@pytest.fixture(scope="session")
def _pair(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("pair")
    app = on_sqlite(directory, sqlite_template, count=2, name="pair")
    try:
        yield app.start()
    finally:
        app.close()


@pytest.fixture
def pair(_pair: Deployment) -> Deployment:
    """Two instances on one SQLite database, each with its own in-memory layer.

    A page on instance 0 receives what is posted through instance 1 only by
    resuming or filling a gap. Tests may stop and restart instance 0.
    """
    for instance in _pair.instances:
        if not instance.running:
            instance.start()
    return _pair


@pytest.fixture
def slug(request: pytest.FixtureRequest) -> str:
    """A room slug unique to this test, readable in the server logs."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"{name[:40].strip('-')}-{os.urandom(3).hex()}"


@pytest.fixture(autouse=True)
def _server_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not _failed(request):
        return
    for name in ("deployment", "_pair"):
        if name in request.fixturenames:
            app = request.getfixturevalue(name)
            tails = "\n".join(app.logs().splitlines()[-80:])
            print(f"\n===== server logs ({name}) =====\n{tails}")


# --- pages -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def _signed_in_states() -> dict[tuple[str, str], Any]:
    """Cookies per (server URL, user), so each user logs in once a session."""
    return {}


@pytest.fixture
def browsing(
    browser: Browser,
    _signed_in_states: dict[tuple[str, str], Any],
    request: pytest.FixtureRequest,
) -> Iterator[Browsing]:
    """Pages for this test; unexpected console errors fail it."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    session = Browsing(browser, _signed_in_states, name)
    yield session
    session.close(failed=_failed(request))
    unexpected = session.unexpected_console_errors()
    if unexpected:
        pytest.fail("console errors:\n" + "\n".join(unexpected), pytrace=False)
