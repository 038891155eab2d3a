"""A deploy in small: instance B gets SIGTERM and its 300 clients reconnect to
A at once, while A admits only a few handshakes at a time. Refusals happen,
carry a retry hint, and every client resumes with nothing lost or repeated
while a publisher on A keeps posting.

The clients follow the reconnect advice of docs/protocol.md (section 8):
wait a random share of the 4012 reason's window, retry within 4503's
window, back off with full jitter on anything else, and resume with
``?after=``. ``make bench``'s ``storm`` scenario does the same at full size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import create_room
from harness.waiting import async_wait_until
from harness.ws import Clients
from tests.integration.common import report, unique_slug

pytestmark = pytest.mark.integration

MOVERS = 300
ADMITTED_AT_ONCE = 4
RESUME_WITHIN_SECONDS = 90
HINT = re.compile(r"retry_(?:after|window)_ms=(\d+)")


class Mover:
    """A client of B: it follows a room, and once B is gone, resumes on A."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.closes: list[tuple[int, str]] = []
        self.greeted = asyncio.Event()
        self.reading: asyncio.Future[None] | None = None

    def hint_seconds(self) -> float | None:
        """The retry hint of the last close's reason, in seconds."""
        match = HINT.fullmatch(self.closes[-1][1]) if self.closes else None
        return int(match[1]) / 1000 if match else None

    async def open(self, app: AppProcess, path: str) -> bool:
        """Connect and read in the background; True once greeted."""
        self.greeted.clear()
        try:
            ws = await websockets.connect(app.ws_url(path), proxy=None, open_timeout=10)
        except (OSError, InvalidHandshake, TimeoutError):
            # Refused over HTTP, or dropped before the 101: a failed attempt,
            # as a browser sees it (1006).
            self.closes.append((1006, ""))
            return False
        self.reading = asyncio.ensure_future(self._read(ws))
        greeted = asyncio.ensure_future(self.greeted.wait())
        await asyncio.wait({greeted, self.reading}, return_when=asyncio.FIRST_COMPLETED)
        greeted.cancel()
        return self.greeted.is_set()

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "message":
                    self.seqs.append(frame["seq"])
                elif frame["type"] == "presence":
                    self.greeted.set()  # after the welcome and any replay
        except ConnectionClosed:
            pass
        self.closes.append((ws.close_code or 1006, ws.close_reason or ""))

    async def resume_on(self, app: AppProcess, path: str) -> int:
        """Reconnect as docs/protocol.md advises; the attempts it took."""
        await asyncio.sleep(random.uniform(0, self.hint_seconds() or 1.0))
        attempts = failures = 0
        while True:
            attempts += 1
            after = max(self.seqs, default=0)
            if await self.open(app, f"{path}?after={after}"):
                return attempts
            code, hint = self.closes[-1][0], self.hint_seconds()
            if code == 4503 and hint is not None:  # a window to retry within
                await asyncio.sleep(random.uniform(0, hint))
            elif code == 4429 and hint is not None:  # a wait, at least
                await asyncio.sleep(hint * (1 + random.random()))
            else:
                failures += 1
                await asyncio.sleep(random.uniform(0, min(5.0, 0.5 * 2**failures)))

    async def close(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reading


async def test_a_reconnect_storm_is_admitted_in_turn_and_loses_nothing(
    launcher: Launcher, deployment: Deployment, clients: Clients
) -> None:
    a, b = launcher.launch_each(
        {
            "a": {
                "SWITCHBOARD_HANDSHAKE_CONCURRENCY": str(ADMITTED_AT_ONCE),
                # The publisher posts faster than a person may.
                "SWITCHBOARD_SEND_BURST": "1000",
                "SWITCHBOARD_SEND_RATE_PER_SECOND": "1000",
            },
            # B tells its clients to spread over 300 / 150 = 2 s.
            "b": {"SWITCHBOARD_SHUTDOWN_RECONNECTS_PER_SECOND": "150"},
        }
    )
    tokens = deployment.fetch_tokens(a)
    owner = deployment.usernames[0]
    slug = unique_slug("storm")
    create_room(a, tokens[owner], slug)
    path = f"/ws/rooms/{slug}/"
    publisher = await clients.open(a, slug, token=tokens[owner], name="publisher@A")
    movers = [Mover() for _ in range(MOVERS)]
    try:
        opening = asyncio.Semaphore(20)

        async def open_on_b(mover: Mover) -> None:
            async with opening:
                assert await mover.open(b, path), mover.closes

        await asyncio.gather(*(open_on_b(mover) for mover in movers))
        first = await publisher.send_message("before the deploy")
        await async_wait_until(lambda: all(first in m.seqs for m in movers), timeout=20)

        publishing = asyncio.ensure_future(
            publisher.publish([f"during the storm #{k}" for k in range(200)], window=1)
        )
        terminated_at = time.monotonic()
        status, _ = await asyncio.to_thread(b.terminate, 30)
        attempts = await asyncio.wait_for(
            asyncio.gather(*(m.resume_on(a, path) for m in movers)),
            RESUME_WITHIN_SECONDS,
        )
        resumed_after = time.monotonic() - terminated_at
        await publishing
        last = max(publisher.acks.values())
        await async_wait_until(lambda: all(last in m.seqs for m in movers), timeout=20)
    finally:
        for mover in movers:
            await mover.close()

    codes = Counter(code for m in movers for code, _ in m.closes)
    figures = report(
        "storm",
        {
            "movers": MOVERS,
            "admitted_at_once": ADMITTED_AT_ONCE,
            "all_resumed_after_s": f"{resumed_after:.1f}",
            "attempts_max": max(attempts),
            "closes": dict(codes),
        },
    )
    assert status == 0, figures
    shutdowns = [m.closes[0] for m in movers]
    assert {code for code, _ in shutdowns} == {4012}, figures
    assert {reason for _, reason in shutdowns} == {"retry_window_ms=2000"}, figures
    busy = [reason for m in movers for code, reason in m.closes if code == 4503]
    assert busy, f"A refused no handshake: {figures}"
    assert all(HINT.fullmatch(r) and int(HINT.fullmatch(r)[1]) > 0 for r in busy)
    for mover in movers:
        assert sorted(mover.seqs) == list(range(first, last + 1)), mover.closes
