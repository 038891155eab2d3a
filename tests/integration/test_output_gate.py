"""The output gate on a real Daphne: clients that never read cannot make the
instance hold their output, whatever they ask for, and everyone else is
served meanwhile."""

import asyncio
import contextlib
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from core.servers.daphne import CLOSE_GRACE_SECONDS
from harness.app import AppProcess
from harness.deployment import prepare_database
from harness.http import api, sign_in
from harness.process import ServiceUnavailable
from tests.integration.common import report, sqlite_copy, sqlite_snapshot
from tests.support.server_settings import TEST_SERVER_SETTINGS

pytestmark = pytest.mark.integration

BUDGET = 256 * 1024
# Each body is sent as 4000 six-byte JSON escapes: ~24 KB a frame, so a full
# replay of the room is ~24 MB per connection, a history page ~2.4 MB.
HEAVY_BODY = "\x01" * 4000
MESSAGES = 1000
STALLED = 24
# What the stalled clients ask for, unguarded: 24 replays of ~24 MB.
UNGUARDED_BYTES = STALLED * MESSAGES * 24_000
RSS_GROWTH_LIMIT = 96 * 1024 * 1024

PASSWORD = "output-gate-Password-1"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def store_heavy(app: AppProcess, token: str) -> None:
    api(app, "POST", "/api/rooms/heavy/messages/", {"body": HEAVY_BODY}, token=token)


SERVER_ENV = {
    "DJANGO_SECRET_KEY": "output-gate-test-key",
    "DJANGO_DEBUG": "1",
    "SWITCHBOARD_OUTPUT_BUFFER_BYTES": str(BUDGET),
    "SWITCHBOARD_OUTPUT_DRAIN_SECONDS": "3",
    # Every history request is served: the gate alone must hold.
    "SWITCHBOARD_HISTORY_RATE_PER_SECOND": "1000",
    "SWITCHBOARD_HISTORY_BURST": "1000",
    # The fixture stores MESSAGES through the API before any test runs.
    "SWITCHBOARD_SEND_RATE_PER_SECOND": "100000",
    "SWITCHBOARD_SEND_BURST": "100000",
    # A cheap password hash for the sender (tests/support/server_settings.py).
    **TEST_SERVER_SETTINGS,
}


def start_app(env: dict[str, str]) -> AppProcess:
    try:
        return AppProcess(env).start()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def heavy_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database whose room ``heavy`` holds MESSAGES heavy messages,
    made once; each test serves a copy of its own from a fresh instance."""
    path = tmp_path_factory.mktemp("output-gate") / "snapshot.sqlite3"
    env = {**SERVER_ENV, "DATABASE_URL": f"sqlite:///{path}"}
    prepare_database(
        env, usernames=["sender"], password=PASSWORD, rooms={"heavy": "Heavy"}
    )
    app = start_app(env)
    try:
        token = sign_in(app, "sender", PASSWORD)
        # Stored through the API, as a user sends them; a few at a time, as
        # Django serves sync views on one thread.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda _: store_heavy(app, token), range(MESSAGES)))
    finally:
        app.close()
    return sqlite_snapshot(path)


@pytest.fixture
def heavy_room(tmp_path, heavy_database):
    """A fresh instance (its own log) on a copy of ``heavy_database``."""
    env = {**SERVER_ENV, "DATABASE_URL": sqlite_copy(heavy_database, tmp_path)}
    app = start_app(env)
    token = sign_in(app, "sender", PASSWORD)
    yield app, token
    app.close()


def small_window_socket(port: int) -> socket.socket:
    """A TCP connection whose kernel buffers hold little, so unread output
    stays with the server, where the gate must bound it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def stalled_client(app: AppProcess, path: str):
    """A WebSocket client that reads (almost) nothing: websockets stops
    reading the socket once one message waits unread."""
    return await websockets.connect(
        app.ws_url(path),
        sock=small_window_socket(app.port),
        max_queue=1,
        max_size=None,
        open_timeout=20,
    )


def test_clients_that_never_read_cannot_fill_the_instance(heavy_room):
    app, token = heavy_room
    baseline = rss_bytes(app.pid)

    async def run() -> dict:
        stalled = [
            await stalled_client(app, "/ws/rooms/heavy/?after=0")
            for _ in range(STALLED)
        ]
        # Each asks for history pages at the allowed rate, never reading.
        for ws in stalled:
            for _ in range(2):
                # A closed one (too slow already) counts as refused.
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"type": "history", "limit": 100}))
        peak = rss_bytes(app.pid)
        async with (
            websockets.connect(app.ws_url("/ws/rooms/heavy/")) as reader,
            websockets.connect(
                app.ws_url("/ws/rooms/heavy/"),
                additional_headers={"Authorization": f"Token {token}"},
            ) as sender,
        ):
            # Served meanwhile: a message posted now reaches a reader.
            await sender.send(json.dumps({"type": "send", "body": "still here"}))
            async with asyncio.timeout(20):
                async for raw in reader:
                    peak = max(peak, rss_bytes(app.pid))
                    frame = json.loads(raw)
                    if frame["type"] == "message" and frame["body"] == "still here":
                        break
            # Past the drain time, every stalled client has been closed
            # (Daphne logs each end; the app's own lines are rate-limited).
            deadline = time.monotonic() + 30
            while app.log_text().count("WSDISCONNECT") < STALLED:
                peak = max(peak, rss_bytes(app.pid))
                assert time.monotonic() < deadline, app.log_text()[-3000:]
                await asyncio.sleep(0.2)
        codes = []
        for ws in stalled:
            # Reading now, each gets what was queued, then 4008 (or, past
            # the grace period, a cut connection).
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(30):
                    async for _ in ws:
                        pass
            codes.append(ws.close_code)
        return {"peak": peak, "codes": codes}

    result = asyncio.run(run())
    growth = result["peak"] - baseline
    report(
        "clients that never read",
        {
            "rss_growth_mib": round(growth / 2**20, 1),
            "unguarded_mb": UNGUARDED_BYTES // 10**6,
        },
    )
    assert growth < RSS_GROWTH_LIMIT, (growth, UNGUARDED_BYTES, app.log_text()[-2000:])
    # Cut off after the grace period (1006) by now, or closed with 4008.
    assert set(result["codes"]) <= {4008, 1006}, result["codes"]


def test_a_client_that_reads_again_gets_the_close_code(heavy_room):
    """The 4008 close frame waits behind the unsent output: a client that
    starts reading within the grace period reads up to it, even late in it
    (autobahn's own 1 s closing-handshake timeout cut such a client off)."""
    app, _ = heavy_room

    async def run() -> int | None:
        ws = await stalled_client(app, "/ws/rooms/heavy/?after=0")
        deadline = time.monotonic() + 30
        while "closing a client of room heavy" not in app.log_text():
            assert time.monotonic() < deadline, app.log_text()[-3000:]
            await asyncio.sleep(0.1)
        # The client is slow to come back: 2 s of the 5 s grace go by (the
        # close frame was queued before the log line was written).
        await asyncio.sleep(CLOSE_GRACE_SECONDS - 3)
        # Then it reads as a client that has caught up reads: with a normal
        # receive window, not the 4 KiB that kept it stalled.
        ws.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024
        )
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        return ws.close_code

    assert asyncio.run(run()) == 4008


def test_a_history_answer_waits_for_the_client_to_read(heavy_room):
    """A page is produced only for a client that has read the last one; a
    reading client gets every page it asks for, trimmed to the budget."""
    app, _ = heavy_room

    async def run() -> tuple[list[dict], list[int]]:
        async with websockets.connect(
            app.ws_url("/ws/rooms/heavy/"), max_size=None
        ) as ws:
            pages, sizes = [], []
            before = None
            while True:
                request = {"type": "history", "limit": 100}
                if before is not None:
                    request["before"] = before
                await ws.send(json.dumps(request))
                async with asyncio.timeout(10):
                    while True:
                        raw = await ws.recv()
                        frame = json.loads(raw)
                        if frame["type"] in ("history", "error"):
                            break
                if frame["type"] == "error":
                    assert frame["code"] == "rate_limited", frame
                    await asyncio.sleep(frame["retry_after_ms"] / 1000)
                    continue
                pages.append(frame)
                sizes.append(len(raw.encode()))
                if not frame["has_more"]:
                    return pages, sizes
                before = frame["messages"][0]["seq"]

    pages, sizes = asyncio.run(run())
    seqs = sorted(m["seq"] for page in pages for m in page["messages"])
    assert seqs == list(range(1, MESSAGES + 1))
    assert max(sizes) <= BUDGET // 4 + 30_000
