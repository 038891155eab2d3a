"""Writing to clients on each server: frames written once for every
recipient arrive intact, and a client that stops reading is dropped while the
room goes on without it."""

import asyncio
import base64
import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
import websockets

from harness.app import AppProcess
from harness.deployment import prepare_database
from harness.http import sign_in
from harness.process import ServiceUnavailable
from harness.waiting import wait_until
from tests.integration.common import sqlite_copy, sqlite_snapshot
from tests.support.server_settings import TEST_SERVER_SETTINGS

pytestmark = pytest.mark.integration

BUFFER_LIMIT = 256 * 1024
# 4000 control characters: each is sent as a 6-byte JSON escape (\u0001),
# so one frame is ~24 KB and a few hundred overflow every socket buffer.
HEAVY_BODY = "\x01" * 4000
MESSAGES = 400

PASSWORD = "slow-client-Password-1"


SERVER_ENV = {
    "DJANGO_SECRET_KEY": "slow-client-test-key",
    "DJANGO_DEBUG": "1",
    "SWITCHBOARD_SLOW_CLIENT_BUFFER_BYTES": str(BUFFER_LIMIT),
    "SWITCHBOARD_SEND_RATE_PER_SECOND": "10000",
    "SWITCHBOARD_SEND_BURST": "10000",
    # A cheap password hash for the sender (tests/support/server_settings.py).
    **TEST_SERVER_SETTINGS,
}


@pytest.fixture(scope="module")
def lobby_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with the sender and the lobby, made once;
    each test serves a copy of its own."""
    path = tmp_path_factory.mktemp("slow-client") / "snapshot.sqlite3"
    prepare_database(
        {**SERVER_ENV, "DATABASE_URL": f"sqlite:///{path}"},
        usernames=["sender"],
        password=PASSWORD,
        rooms={"lobby": "lobby"},
    )
    return sqlite_snapshot(path)


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request, tmp_path, lobby_database):
    env = {**SERVER_ENV, "DATABASE_URL": sqlite_copy(lobby_database, tmp_path)}
    try:
        app = AppProcess(env, server=request.param).start()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    token = sign_in(app, "sender", PASSWORD)
    yield app, token
    app.close()


def stalled_client(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws/rooms/lobby/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b" 101 " in sock.recv(1024).split(b"\r\n", 1)[0] + b" "
    return sock


def test_a_client_that_stops_reading_is_dropped_and_others_get_everything(server):
    app, token = server
    stalled = stalled_client(app.port)

    async def run() -> list[int]:
        async with (
            websockets.connect(app.ws_url("/ws/rooms/lobby/"), max_size=None) as reader,
            websockets.connect(
                app.ws_url("/ws/rooms/lobby/"),
                additional_headers={"Authorization": f"Token {token}"},
            ) as sender,
        ):
            seqs: list[int] = []

            async def read() -> None:
                async for raw in reader:
                    frame = json.loads(raw)
                    if frame["type"] == "message":
                        seqs.append(frame["seq"])
                        if len(seqs) == MESSAGES:
                            return

            async def drain_sender() -> None:
                # The sender hears its own messages too; a sender that does
                # not read them would itself be dropped as a slow client.
                async for _ in sender:
                    pass

            reading = asyncio.ensure_future(read())
            draining = asyncio.ensure_future(drain_sender())
            for n in range(MESSAGES):
                await sender.send(
                    json.dumps(
                        {"type": "send", "body": HEAVY_BODY, "client_id": f"h{n}"}
                    )
                )
            async with asyncio.timeout(60):
                await reading
            draining.cancel()
            return seqs

    seqs = asyncio.run(run())
    assert seqs == list(range(1, MESSAGES + 1))
    # Whichever frame finds it over its budget first closes it: a live
    # message ("it stopped reading") or a presence update ("its unsent
    # output passed its budget"), which may come first on a busy machine.
    wait_until(
        lambda: "closing a client of room lobby" in app.log_text(), timeout=10,
        message="the server dropped the stalled client",
    )  # fmt: skip
    # The stalled client's connection ends (reset, or EOF after the data the
    # kernel already held); a connection left open would time out here. It
    # reads what is left through a normal receive window: through the 4 KiB
    # one that kept it stalled (fixed at the handshake, hence the clamp),
    # the megabytes the server's kernel still held for it after uvicorn
    # closed it came at ~40 KB/s, 90 s and more, most of this tier's time.
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    stalled.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, 1 << 20)
    stalled.settimeout(10)
    with contextlib.suppress(ConnectionResetError):
        while stalled.recv(1 << 20):
            pass
    stalled.close()


# A body for each WebSocket payload length encoding (7-bit, 16-bit, 64-bit),
# with text that JSON escapes and text it keeps as UTF-8.
BODIES = ["short é ☃", "\U0001f600" * 100, "x" * 4000]


@pytest.mark.parametrize("compression", ["deflate", None])
def test_every_frame_arrives_intact_with_or_without_compression(server, compression):
    """Without an extension the servers write the shared frame themselves
    (core.servers.backpressure); with permessage-deflate they frame it through ASGI."""
    app, token = server
    lobby = app.ws_url("/ws/rooms/lobby/")

    async def run() -> list[dict]:
        async with (
            websockets.connect(lobby, compression=compression) as reader,
            websockets.connect(
                lobby,
                additional_headers={"Authorization": f"Token {token}"},
                # It reads nothing; unbounded, its close need not wait.
                max_queue=None,
            ) as sender,
        ):
            for n in range(30):
                body = BODIES[n % len(BODIES)]
                await sender.send(
                    json.dumps({"type": "send", "body": body, "client_id": f"f{n}"})
                )
            received = []
            async with asyncio.timeout(30):
                async for raw in reader:
                    frame = json.loads(raw)
                    if frame["type"] == "message":
                        received.append(frame)
                        if len(received) == 30:
                            return received
            return received

    received = asyncio.run(run())
    assert [m["seq"] for m in received] == list(range(1, 31))
    assert [m["body"] for m in received] == [BODIES[n % 3] for n in range(30)]
