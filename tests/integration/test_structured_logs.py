"""A whole session behind App Platform, as an instance logs it in JSON.

One real Daphne (``DJANGO_HTTPS=1``, ``SWITCHBOARD_LOG_FORMAT=json``) sees
what App Platform's proxy forwards (``X-Forwarded-Proto``, the client's
address in ``DO-Connecting-IP``): a sign-up, a token, rooms, messages over
WebSockets (token and session cookie) and over HTTP, a wrong password, a
sign-in on the page, a bad token, a revoked one. Then its log, every line of
it: one JSON object each, with the fields docs/deploy.md promises, and none
of the session's secrets (passwords, tokens, cookies, message bodies).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.app import AppProcess, manage
from harness.deployment import Launcher
from harness.http import request
from harness.process import LOOPBACK
from harness.waiting import async_wait_until

pytestmark = pytest.mark.integration

USERS = 0  # the session signs its own user up
CLIENT = "203.0.113.77"  # where App Platform says the client is
FRAME_TIMEOUT_SECONDS = 5.0
HEX_ID = re.compile(r"[0-9a-f]{32}")

# Each marked so that any trace of it in the log is unmistakable.
RUN = secrets.token_hex(4)
PASSWORD = f"Pw-{RUN}-never-in-the-log"
WRONG_PASSWORD = f"Wrong-{RUN}-never-in-the-log"
BAD_TOKEN = f"badtoken{RUN}neverinthelog"
QUERY_SECRET = f"query-{RUN}-never-in-the-log"
WS_BODY = f"ws body {RUN} never in the log"
HTTP_BODY = f"http body {RUN} never in the log"
USERNAME = f"logs-{RUN}"
SLUG = f"logs-{RUN}"


class Browser:
    """HTTP as App Platform's proxy forwards it, with a cookie jar.

    Every request's ``X-Request-ID`` goes to ``request_ids``, in order.
    """

    def __init__(self, app: AppProcess, request_ids: list[str]) -> None:
        self.app = app
        self.origin = f"https://{LOOPBACK}:{app.port}"
        self.cookies: dict[str, str] = {}
        self.request_ids = request_ids

    async def __call__(self, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        """``request`` off the event loop, so open sockets keep reading."""
        return await asyncio.to_thread(self.request, method, path, **kwargs)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: object | None = None,
        form: dict[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, str]:
        headers = {
            "X-Forwarded-Proto": "https",
            "DO-Connecting-IP": CLIENT,
            "Origin": self.origin,
        }
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = request(
            self.app, method, path, json_body=json_body, form=form, token=token,
            headers=headers,
        )  # fmt: skip
        for cookie in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        self.request_ids.append(response.headers["X-Request-ID"])
        return response.status, response.text

    async def csrf_form(self, path: str) -> str:
        """GET a page; the CSRF token of its form."""
        status, page = await self("GET", path)
        assert status == 200, (path, status)
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert found, page[:500]
        return found.group(1)


async def socket(
    app: AppProcess, *, token: str | None = None, cookies: dict[str, str] | None = None
) -> websockets.ClientConnection:
    headers = {"DO-Connecting-IP": CLIENT}
    origin = None
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    if cookies is not None:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        origin = f"https://{LOOPBACK}:{app.port}"  # a browser sends its page's
    return await websockets.connect(
        app.ws_url(f"/ws/rooms/{SLUG}/"),
        additional_headers=headers,
        origin=origin,
        open_timeout=FRAME_TIMEOUT_SECONDS,
        ping_interval=None,
        close_timeout=2,
        proxy=None,
    )


async def frame_of(
    ws: websockets.ClientConnection, kind: str, **fields: object
) -> dict[str, Any]:
    """The next frame of type ``kind`` holding ``fields``."""
    async with asyncio.timeout(FRAME_TIMEOUT_SECONDS):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind and fields.items() <= frame.items():
                return frame


async def closed_with(ws: websockets.ClientConnection) -> int | None:
    async with asyncio.timeout(FRAME_TIMEOUT_SECONDS):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            return ws.close_code


@pytest.fixture(scope="module")
def static_files() -> None:
    """The pages need the build's collectstatic output (DJANGO_DEBUG=0)."""
    manage("collectstatic", "--noinput", "--verbosity", "0", env={})


@pytest.fixture
def app(launcher: Launcher, static_files: None) -> AppProcess:
    (instance,) = launcher.launch(
        "json",
        env={
            "DJANGO_HTTPS": "1",
            "SWITCHBOARD_LOG_FORMAT": "json",
            "DJANGO_ALLOWED_HOSTS": LOOPBACK,
        },
    )
    return instance


async def a_whole_session(app: AppProcess) -> dict[str, Any]:
    """Everything a user does, through the proxy; what the log must not hold.

    ``page`` is a browser (session cookie, CSRF tokens), ``script`` a program
    with the API token.
    """
    request_ids: list[str] = []
    page, script = Browser(app, request_ids), Browser(app, request_ids)
    signup = await page.csrf_form("/accounts/signup/")
    form = {"username": USERNAME, "password1": PASSWORD, "password2": PASSWORD}
    status, _ = await page(
        "POST", "/accounts/signup/", form={"csrfmiddlewaretoken": signup, **form}
    )
    assert status == 302, "signed up and redirected"
    session = dict(page.cookies)
    credentials = {"username": USERNAME, "password": PASSWORD}
    status, body = await script("POST", "/api/auth/token/", json_body=credentials)
    assert status == 200, body
    token = json.loads(body)["token"]
    room = {"name": "Logs", "slug": SLUG, "is_private": False}
    status, body = await script("POST", "/api/rooms/", token=token, json_body=room)
    assert status == 201, body

    by_token = await socket(app, token=token)
    by_cookie = await socket(app, cookies=session)
    await by_token.send(
        json.dumps({"type": "send", "body": WS_BODY, "client_id": "c1"})
    )
    await frame_of(by_token, "ack")
    await frame_of(by_cookie, "message", body=WS_BODY)
    status, body = await script(
        "POST",
        f"/api/rooms/{SLUG}/messages/",
        token=token,
        json_body={"body": HTTP_BODY},
    )
    assert status == 201, body
    await frame_of(by_token, "message", body=HTTP_BODY)
    status, _ = await script("GET", f"/api/rooms/?token={QUERY_SECRET}")
    assert status == 200
    status, _ = await script("GET", f"/api/no-such-page/?password={QUERY_SECRET}")
    assert status == 404

    wrong = {"username": USERNAME, "password": WRONG_PASSWORD}
    status, _ = await script("POST", "/api/auth/token/", json_body=wrong)
    assert status == 400
    login = await page.csrf_form("/accounts/login/")
    status, _ = await page(
        "POST",
        "/accounts/login/",
        form={"csrfmiddlewaretoken": login, **credentials},
    )
    assert status == 302, "signed in and redirected"
    with pytest.raises(InvalidStatus):
        await socket(app, token=BAD_TOKEN)

    status, _ = await script("DELETE", "/api/auth/token/", token=token)
    assert status == 204
    assert await closed_with(by_token) == 4403
    await by_cookie.close()
    # Both ends logged before the shutdown below, which would close a
    # socket still open with 4012.
    await async_wait_until(
        lambda: app.log_text().count('"event": "ws.disconnect"') == 2,
        timeout=FRAME_TIMEOUT_SECONDS,
        message="both WebSockets' last lines",
    )
    return {
        "secrets": [
            PASSWORD,
            WRONG_PASSWORD,
            BAD_TOKEN,
            QUERY_SECRET,
            WS_BODY,
            HTTP_BODY,
            token,
            signup,
            login,
            *session.values(),
            *page.cookies.values(),
        ],
        "request_ids": request_ids,
    }


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the log as JSON; fails naming the first that is not."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed = json.loads(line)
        except ValueError:
            pytest.fail(f"log line {number} is not JSON: {line[:300]!r}")
        assert isinstance(parsed, dict), f"log line {number}: {line[:300]!r}"
        lines.append(parsed)
    return lines


async def test_a_whole_session_logs_json_with_context_and_no_secret(app):
    session = await a_whole_session(app)
    await asyncio.to_thread(app.terminate)  # shutdown lines count too
    text = app.log_text()

    for secret in session["secrets"]:
        assert secret not in text, f"a secret is in the log: {secret[:12]}..."
    lines = json_lines(text)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)

    accesses = [line for line in lines if line.get("event") == "http.request"]
    # Besides the session's requests: the launcher's /healthz probes.
    probes = [line for line in accesses if line["path"] == "/healthz"]
    assert {line["client"] for line in probes} == {LOOPBACK}  # no proxy there
    requests = [line for line in accesses if line not in probes]
    assert [line["request_id"] for line in requests] == session["request_ids"]
    for line in requests:
        assert HEX_ID.fullmatch(line["request_id"])
        assert line["client"] == CLIENT, line
        assert {"method", "path", "status", "bytes", "duration_ms"} <= set(line)
        assert "?" not in line["path"]
        assert "?" not in line["message"]
    signed_in = [line for line in requests if "user_id" in line]
    user_id = signed_in[0]["user_id"]
    assert {line["user_id"] for line in signed_in} == {user_id}
    posted = [line for line in requests if line["path"].endswith("/messages/")]
    assert [(line["status"], line["room"]) for line in posted] == [(201, SLUG)]
    assert posted[0]["user_id"] == user_id

    not_found = next(line for line in lines if line["logger"] == "django.request")
    assert not_found["status"] == 404
    assert not_found["request_id"] in session["request_ids"]
    assert not_found["client"] == CLIENT

    opened = [line for line in lines if line.get("event") == "ws.connect"]
    ended = [line for line in lines if line.get("event") == "ws.disconnect"]
    assert len(opened) == len(ended) == 2
    for line in opened + ended:
        assert HEX_ID.fullmatch(line["connection_id"])
        assert (line["client"], line["user_id"], line["room"]) == (
            CLIENT,
            user_id,
            SLUG,
        )
        assert line["duration_ms"] >= 0
    assert {line["connection_id"] for line in opened} == {
        line["connection_id"] for line in ended
    }
    assert sorted(line["close_code"] for line in ended) == [1000, 4403]

    (rejected,) = [line for line in lines if line.get("event") == "ws.reject"]
    (reason,) = [line for line in lines if line.get("event") == "ws.bad_authorization"]
    assert reason["connection_id"] == rejected["connection_id"]
    assert (rejected["client"], rejected["status"]) == (CLIENT, 403)

    assert any("Listening on TCP address" in line["message"] for line in lines)
    assert any("pending application instances" in line["message"] for line in lines)
