"""Access lines and log scopes for requests and connections (core.accesslog).

Lines are read as the console handler writes them under
``SWITCHBOARD_LOG_FORMAT=json``: a handler with the same filter and
formatter is put on the root logger for each test.
"""

import asyncio
import io
import json
import logging
import sys
import types

import pytest
from asgiref.testing import ApplicationCommunicator

from backend.asgi import application
from core import accesslog, services
from core.fanout import get_hub
from core.logcontext import ContextFilter, JsonFormatter
from core.servers import backpressure
from tests.unit.conftest import connected, refused, token_for

pytestmark = pytest.mark.django_db(transaction=True)

PEER = ("198.51.100.9", 50123)
REAL_CLIENT = "203.0.113.7"


@pytest.fixture
def lines():
    """The JSON lines logged during the test, parsed (a function)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)


@pytest.fixture
def behind_proxy(settings):
    settings.HTTPS = True
    settings.CLIENT_IP_HEADER = "DO-Connecting-IP"


def events(found: list[dict], name: str) -> list[dict]:
    return [line for line in found if line.get("event") == name]


async def request(
    path: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
    client: tuple[str, int] = PEER,
) -> dict:
    """One GET from ``client``; the response's status and headers."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"localhost"), *(headers or [])],
        "client": client,
        "server": ("127.0.0.1", 8080),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=5)
    while (await communicator.receive_output(timeout=5)).get("more_body"):
        pass
    await communicator.wait(timeout=5)
    return {"status": start["status"], "headers": dict(start["headers"])}


# --- HTTP ------------------------------------------------------------------------


async def test_a_request_gets_an_id_told_in_its_response_and_one_access_line(lines):
    response = await request("/api/rooms/", query=b"after=1")
    (line,) = events(lines(), "http.request")
    assert response["headers"][b"x-request-id"].decode() == line["request_id"]
    assert len(line["request_id"]) == 32
    assert line["client"] == PEER[0]
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/rooms/", 200)
    assert line["bytes"] > 0
    assert line["duration_ms"] >= 0
    assert line["logger"] == "core.accesslog"
    assert line["message"] == f'{PEER[0]} "GET /api/rooms/" 200 {line["duration_ms"]}ms'


async def test_the_query_string_is_never_logged(lines):
    await request("/api/rooms/", query=b"token=s3cr3t-in-a-query")
    assert "s3cr3t" not in json.dumps(lines())


async def test_lines_logged_for_a_request_carry_its_id_and_client(lines):
    """Django's "Not Found" line, logged from a thread, is the request's."""
    response = await request("/api/no-such-thing/")
    found = lines()
    (django_line,) = [line for line in found if line["logger"] == "django.request"]
    (access,) = events(found, "http.request")
    assert response["status"] == django_line["status"] == access["status"] == 404
    assert django_line["request_id"] == access["request_id"]
    assert django_line["client"] == PEER[0]


async def test_an_authenticated_request_names_its_user_and_room(lines, lobby, alice):
    token = await token_for(alice)
    headers = [(b"authorization", f"Token {token}".encode())]
    await request("/api/rooms/lobby/messages/", headers=headers)
    (line,) = events(lines(), "http.request")
    assert (line["user_id"], line["room"], line["status"]) == (alice.pk, "lobby", 200)


async def test_behind_the_proxy_the_platforms_header_is_the_client(lines, behind_proxy):
    headers = [
        (b"do-connecting-ip", REAL_CLIENT.encode()),
        (b"x-forwarded-proto", b"https"),
    ]
    await request("/healthz", headers=headers)
    assert events(lines(), "http.request")[0]["client"] == REAL_CLIENT


async def test_without_the_proxy_the_header_is_not_believed(lines, settings):
    settings.HTTPS = False
    await request("/healthz", headers=[(b"do-connecting-ip", REAL_CLIENT.encode())])
    assert events(lines(), "http.request")[0]["client"] == PEER[0]


async def test_an_ipv6_client_is_logged_whole_not_as_its_64(lines, settings):
    settings.HTTPS = False
    await request("/healthz", client=("2001:db8:1:2::1", 50000))
    assert events(lines(), "http.request")[0]["client"] == "2001:db8:1:2::1"


# --- WebSockets ------------------------------------------------------------------


async def test_a_connection_logs_when_accepted_and_when_it_ends(lines, lobby, alice):
    token = await token_for(alice)
    async with connected("lobby", token=token):
        pass
    found = lines()
    (opened,) = events(found, "ws.connect")
    (ended,) = events(found, "ws.disconnect")
    assert opened["connection_id"] == ended["connection_id"]
    assert len(opened["connection_id"]) == 32
    for line in (opened, ended):
        assert (line["user_id"], line["room"]) == (alice.pk, "lobby")
        assert line["path"] == "/ws/rooms/lobby/"
        assert line["duration_ms"] >= 0
    assert ended["close_code"] == 1000
    assert "WSCONNECT /ws/rooms/lobby/" in opened["message"]
    assert "WSDISCONNECT /ws/rooms/lobby/" in ended["message"]


async def test_an_anonymous_connection_has_no_user(lines, lobby):
    async with connected("lobby"):
        pass
    (opened,) = events(lines(), "ws.connect")
    assert opened["room"] == "lobby"
    assert "user_id" not in opened


async def test_lines_logged_from_the_hub_for_a_connection_are_its_own(lines, lobby):
    """The hub calls ``_too_slow`` from a task of its own; the connection's
    id is the consumer's, which presence entries use too."""
    async with connected("lobby") as ws:
        group = services.room_group(lobby.pk)
        (consumer,) = get_hub().members[group]
        await asyncio.create_task(_from_another_task(consumer))
        assert (await ws.receive_output(timeout=5))["code"] == 4008
    found = lines()
    (opened,) = events(found, "ws.connect")
    (slow,) = events(found, "ws.too_slow")
    assert consumer.connection_id == opened["connection_id"] == slow["connection_id"]
    assert slow["room"] == "lobby"


async def _from_another_task(consumer: object) -> None:
    consumer._too_slow("a test says so")  # type: ignore[attr-defined]


async def test_a_refused_handshake_is_one_reject_line_after_its_reason(lines, lobby):
    await refused("lobby", token="not-a-token-value-0123456789")
    found = lines()
    (rejected,) = events(found, "ws.reject")
    (reason,) = events(found, "ws.bad_authorization")
    assert rejected["status"] == 403
    assert reason["connection_id"] == rejected["connection_id"]
    assert "not-a-token-value" not in json.dumps(found)
    assert not events(found, "ws.connect")


def test_backpressure_still_finds_the_servers_send_behind_the_wrapper():
    async def server_send(message: dict) -> None: ...

    socket = accesslog._Socket(server_send, "/ws/rooms/x/", {})
    assert backpressure._unwrap(socket.send) is server_send


# --- Daphne's own access log -----------------------------------------------------


def test_daphnes_own_access_log_is_switched_off(monkeypatch):
    """Daphne builds its access logger after importing the application."""
    cli = types.ModuleType("daphne.cli")
    cli.AccessLogGenerator = lambda stream: "Daphne's NCSA lines"
    monkeypatch.setitem(sys.modules, "daphne.cli", cli)
    accesslog.quiet_daphne()
    assert cli.AccessLogGenerator(sys.stdout) is None


def test_without_daphne_nothing_is_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "daphne.cli", raising=False)
    accesslog.quiet_daphne()
    assert "daphne.cli" not in sys.modules
