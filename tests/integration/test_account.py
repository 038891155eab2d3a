"""A password change on the account page, against real processes: two
Daphne instances on Redis and PostgreSQL, browsers played by cookie jars.

The socket that another session opened (on the other instance) closes with
4403; the changing browser's own socket and the API token's stay open and
keep receiving. The periodic re-check is an hour here, so the closes come
from the change's own events.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import re
import urllib.parse
import urllib.request
from typing import Any

import pytest
import websockets

from harness.app import manage
from harness.deployment import Deployment, Launcher
from harness.http import create_room
from harness.ws import FRAME_TIMEOUT_SECONDS, Clients, WsClient, is_type
from tests.integration.common import PASSWORD, unique_slug

pytestmark = pytest.mark.integration

USERS = 1  # one password hash for the module's users
NEW_PASSWORD = "integration-Password-2-changed"
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class Browser:
    """A cookie jar that signs in and submits forms, as a browser would."""

    def __init__(self, app: Any) -> None:
        self.base = app.url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar)
        )

    def get(self, path: str) -> tuple[str, str]:
        """(final URL, page) after redirects."""
        with self.opener.open(self.base + path, timeout=10) as response:
            return response.geturl(), response.read().decode()

    def submit(self, page_path: str, action: str, fields: dict[str, str]) -> str:
        """Fill the form of ``page_path`` posting to ``action``; the final URL."""
        _, page = self.get(page_path)
        token = CSRF_FIELD.search(page)
        assert token, f"no CSRF field on {page_path}"
        data = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": token.group(1), **fields}
        ).encode()
        with self.opener.open(self.base + action, data, timeout=10) as response:
            return response.geturl()

    def log_in(self, username: str) -> None:
        final = self.submit(
            "/accounts/login/",
            "/accounts/login/",
            {"username": username, "password": PASSWORD},
        )
        assert final == self.base + "/", final

    @property
    def cookie(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


class SessionWsClient(WsClient):
    """A ``WsClient`` signed in by a browser's session cookie."""

    def __init__(self, app: Any, slug: str, browser: Browser, name: str) -> None:
        super().__init__(app, slug, name=name)
        self.browser = browser

    async def connect(self) -> SessionWsClient:
        self.ws = await websockets.connect(
            self.url,
            additional_headers={"Cookie": self.browser.cookie},
            open_timeout=FRAME_TIMEOUT_SECONDS,
            ping_interval=None,
            close_timeout=2,
            proxy=None,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self


@pytest.fixture(scope="module")
def static_files() -> None:
    """The pages need the build's collectstatic output (DJANGO_DEBUG=0)."""
    manage("collectstatic", "--noinput", "--verbosity", "0", env={})


@pytest.fixture(scope="module")
def pair(
    module_launcher: Launcher, deployment: Deployment, static_files: None
) -> list[Any]:
    apps = module_launcher.launch(
        "a", "b", env={"SWITCHBOARD_ACCESS_RECHECK_SECONDS": "3600"}
    )
    deployment.fetch_tokens(*apps)
    return apps


async def opened(client: WsClient, clients: Clients) -> WsClient:
    clients.all.append(client)
    await client.connect()
    await client.wait_for_frame(is_type("presence"), what="presence")
    return client


async def test_a_password_change_closes_the_other_sessions_socket_only(
    pair: list[Any], deployment: Deployment, clients: Clients
) -> None:
    a, b = pair
    user = deployment.usernames[0]
    token = deployment.tokens[user]
    slug = unique_slug("account")
    await asyncio.to_thread(create_room, a, token, slug)
    here, elsewhere = Browser(a), Browser(b)
    await asyncio.to_thread(here.log_in, user)
    await asyncio.to_thread(elsewhere.log_in, user)

    own = await opened(SessionWsClient(a, slug, here, "own"), clients)
    other = await opened(SessionWsClient(b, slug, elsewhere, "other"), clients)
    bot = await clients.open(b, slug, token=token, name="token")
    welcome = await other.wait_for_frame(is_type("welcome"))
    assert welcome["user"] == user  # signed in by the session, not a guest

    final = await asyncio.to_thread(
        here.submit,
        "/account/",
        "/account/password/",
        {
            "old_password": PASSWORD,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },
    )
    assert final == a.url + "/account/"

    assert await other.wait_closed(timeout=10) == 4403
    seq = await own.send_message("the changing browser still posts")
    await bot.wait_for_seqs([seq])
    assert not own.closed
    assert not bot.closed
    # The other browser's next page is a sign-in; this one's is not.
    url, _ = await asyncio.to_thread(elsewhere.get, "/account/")
    assert url.startswith(b.url + "/accounts/login/")
    url, page = await asyncio.to_thread(here.get, "/account/")
    assert url == a.url + "/account/"
    assert f'A token ending in <code class="token-tail">{token[-4:]}</code>' in page
