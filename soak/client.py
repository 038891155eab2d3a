"""One soak client: a person's tab in one room, reconnecting for the whole run.

It follows docs/protocol.md as a careful client must (9.3, section 8):

- the first connection asks ``?after=0`` (the soak checks that a client holds
  its room from seq 1), every reconnect ``?after=<contiguous>``;
- duplicates are dropped by ``seq``; a gap still open after 2 s is filled
  with ``history`` (``after`` = contiguous), page after page, and so is an
  incomplete replay;
- every send has a fresh ``client_id`` and stays in ``pending`` until its
  ``ack``; all of them are resent after each ``welcome`` and after an
  ``internal_error``, a ``rate_limited`` one after ``retry_after_ms``;
- after a close it did not ask for it waits as section 8 says (a window for
  4012/1012 and 4503, at least ``retry_after_ms`` for 4429, full-jitter
  backoff otherwise) and resumes; 4403 is final until access is given back.

On top of that it churns: after 5-30 s it closes (or, now and then, drops
TCP without a close, or forgets everything like a fresh tab) and reconnects
to the other instance. Readers scroll back through ``history`` now and then;
senders send ``typing`` before some messages.

Everything a client sees is counted in the shared ``Tally``; whether a
frame or close was expected is decided here, where the context is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from soak import config
from soak.timeline import Timeline, message_crc

if TYPE_CHECKING:
    from soak.traffic import Traffic

RETRY_WINDOW = re.compile(r"retry_window_ms=(\d+)")
RETRY_AFTER = re.compile(r"retry_after_ms=(\d+)")
CLOSE_REVOKED = 4403
CLOSE_BUSY = 4503
CLOSE_LIMIT = 4429
CLOSE_SHUTDOWN = (4012, 1012)
# Errors that can answer a history request (whose errors carry no client_id).
HISTORY_ERRORS = ("rate_limited", "forbidden", "internal_error")


@dataclass
class Pending:
    body: str
    first_sent: float
    attempts: int = 0


class SoakClient:
    """One tab: ``run()`` until the soak says it is over."""

    def __init__(
        self,
        traffic: Traffic,
        *,
        name: str,
        room: str,
        user: str | None,
        instance: int,
        rng: random.Random,
        send_seconds: float | None = None,
        pager: bool = False,
    ) -> None:
        self.traffic = traffic
        self.name = name
        self.room = room
        self.user = user
        self.token = traffic.stack.tokens[user] if user else None
        self.instance = instance
        self.rng = rng
        self.send_seconds = send_seconds
        self.pager = pager
        self.timeline = Timeline()
        self.pending: dict[str, Pending] = {}
        self.counter = 0
        self.ws: websockets.ClientConnection | None = None
        self.welcomed = False
        self.connected_instance: int | None = None
        self.own_close = False
        self.waiting_for_access = False
        self.closed_4403_at: float | None = None
        self.attempt = 0
        self.last_frame_at = 0.0
        self.gap_since: float | None = None
        self.fill_now = False
        self.history_lock = asyncio.Lock()
        self.history_waiter: asyncio.Future[dict[str, Any]] | None = None
        self.done = False

    def __repr__(self) -> str:
        return f"<SoakClient {self.name} {self.room}>"

    @property
    def tally(self) -> Any:
        return self.traffic.tally

    @property
    def connected(self) -> bool:
        return self.ws is not None and self.welcomed

    @property
    def private(self) -> bool:
        return self.room == config.PRIVATE_ROOM

    def caught_up(self, last_seq: int) -> bool:
        """Connected, holding 1..last_seq, with no send unacknowledged."""
        return (
            self.connected and self.timeline.contiguous >= last_seq and not self.pending
        )

    # --- the whole run ----------------------------------------------------------

    async def run(self) -> None:
        sender = None
        if self.send_seconds is not None:
            sender = asyncio.create_task(self._send_loop(), name=f"{self.name}-send")
        try:
            while not self.traffic.finished:
                delay = await self._session()
                if self.traffic.finished:
                    break
                if delay is None:  # access revoked: wait until it is back
                    await self._wait_for_access()
                    continue
                if delay > 0:
                    await self.traffic.sleep(delay)
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def close(self) -> None:
        """End the run for this client: a normal close, not counted as churn."""
        self.done = True
        ws = self.ws
        if ws is not None:
            self.own_close = True
            with contextlib.suppress(Exception):
                await ws.close()

    async def _wait_for_access(self) -> None:
        self.waiting_for_access = True
        try:
            await self.traffic.access_back(self.user)
        finally:
            self.waiting_for_access = False

    # --- one connection -------------------------------------------------------

    async def _session(self) -> float | None:
        """Connect, follow the room until the connection ends; return how long
        to wait before the next try (None: until access is back).
        """
        app = self.traffic.stack.instances[self.instance]
        path = f"/ws/rooms/{self.room}/?after={self.timeline.contiguous}"
        headers = {"Authorization": f"Token {self.token}"} if self.token else {}
        self.own_close = False
        self.welcomed = False
        self.tally.count("handshakes")
        try:
            ws = await websockets.connect(
                app.ws_url(path),
                additional_headers=headers,
                open_timeout=config.OPEN_TIMEOUT_SECONDS,
                ping_interval=None,  # the protocol's own ping, below
                close_timeout=5,
                max_size=2**24,
                max_queue=None,
                proxy=None,
            )
        except InvalidStatus as exc:
            return self._refused(exc.response.status_code)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.tally.unexpected_close(
                f"connect failed ({type(exc).__name__})", self, str(exc)[:200]
            )
            return self._backoff()
        self.ws = ws
        self.connected_instance = self.instance
        self.last_frame_at = time.monotonic()
        self.gap_since = None
        self.fill_now = False
        self.traffic.opened(self)
        helpers = [
            asyncio.create_task(self._fill_gaps()),
            asyncio.create_task(self._ping()),
            asyncio.create_task(self._churn()),
        ]
        if self.pager:
            helpers.append(asyncio.create_task(self._page_back()))
        try:
            async for text in ws:
                self.last_frame_at = time.monotonic()
                await self._on_frame(json.loads(text))
        except ConnectionClosed:
            pass
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self.ws = None
            self.welcomed = False
            self.traffic.closed(self)
            self.history_waiter = None
        return self._after_close(ws)

    def _after_close(self, ws: websockets.ClientConnection) -> float | None:
        """Count the close and say how long to wait (section 8)."""
        self.instance = (self.instance + 1) % len(self.traffic.stack.instances)
        if self.own_close:
            return 0.0 if not self.traffic.churning else self.rng.uniform(0.0, 0.2)
        received = ws.protocol.close_rcvd
        code = received.code if received is not None else 1006
        reason = received.reason if received is not None else ""
        if code == CLOSE_REVOKED:
            if self.private and self.traffic.is_removed(self.user):
                self.closed_4403_at = time.monotonic()
                self.tally.expected_close("4403 (removed member)")
                return None
            self.tally.unexpected_close(code, self, reason)
            return self._backoff()
        if code == CLOSE_BUSY:
            self.tally.busy_refusal(self)
            return self.rng.uniform(0, _ms(RETRY_WINDOW, reason, 5000) / 1000)
        self.tally.unexpected_close(code, self, reason)
        if code in CLOSE_SHUTDOWN:
            return self.rng.uniform(0, _ms(RETRY_WINDOW, reason, 5000) / 1000)
        if code == CLOSE_LIMIT:
            wait = _ms(RETRY_AFTER, reason, 10000) / 1000
            return wait + self.rng.uniform(0, wait)
        return self._backoff()

    def _refused(self, status: int) -> float | None:
        """A handshake answered with an HTTP status instead of 101."""
        if status == 403 and self.private and self.traffic.is_removed(self.user):
            self.tally.expected_close("403 handshake (removed member)")
            return None
        self.tally.unexpected_close(f"HTTP {status}", self)
        return self._backoff()

    def _backoff(self) -> float:
        """Full jitter: uniform in 0..min(10 s, 0.5 s x 2^n)."""
        ceiling = min(
            config.BACKOFF_CAP_SECONDS, config.BACKOFF_BASE_SECONDS * 2**self.attempt
        )
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    # --- frames ----------------------------------------------------------------

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        tally = self.tally
        if kind == "message":
            self._hold(frame)
            tally.count("messages received")
        elif kind == "welcome":
            self.welcomed = True
            self.attempt = 0
            self.timeline.mention(frame["last_seq"])
            tally.count("welcomes")
            await self._resend_all()
        elif kind == "replayed":
            tally.count("replays")
            if not frame["complete"]:
                tally.count("replays incomplete")
                self.fill_now = True
        elif kind == "history":
            for message in frame["messages"]:
                self._hold(message)
            self._answer_history(frame)
        elif kind == "ack":
            self._acked(frame["client_id"], frame["seq"])
        elif kind == "error":
            await self._on_error(frame)
        elif kind == "presence":
            tally.count("presence frames")
        elif kind == "typing":
            tally.count("typing received")
        elif kind == "pong":
            tally.count("pongs")
        else:
            tally.anomaly(f"unknown frame type {kind!r}", self)

    def _hold(self, message: dict[str, Any]) -> None:
        crc = message_crc(message["author"], message["client_id"], message["body"])
        self.timeline.add(message["seq"], crc)

    def _acked(self, client_id: str, seq: int) -> None:
        self.timeline.mention(seq)
        pending = self.pending.pop(client_id, None)
        self.traffic.ledger_ack(self, client_id, seq, pending)

    async def _on_error(self, frame: dict[str, Any]) -> None:
        code = frame.get("code", "?")
        client_id = frame.get("client_id")
        expected = (
            code == "forbidden" and self.private and self.traffic.is_removed(self.user)
        )
        if expected:
            self.tally.expected_error(code)
        else:
            self.tally.unexpected_error(code, self, frame)
        if client_id is None and code in HISTORY_ERRORS:
            # history errors carry no client_id: answer a waiting request
            self._answer_history(frame)
        if code == "rate_limited" and client_id in self.pending:
            wait = frame.get("retry_after_ms", 1000) / 1000
            asyncio.get_running_loop().call_later(
                wait, lambda: asyncio.ensure_future(self._resend(client_id))
            )
        elif code == "internal_error":
            wait = self.rng.uniform(0.2, 1.0)
            asyncio.get_running_loop().call_later(
                wait, lambda: asyncio.ensure_future(self._resend_all())
            )

    # --- sending ---------------------------------------------------------------

    async def _send(self, frame: dict[str, Any]) -> bool:
        ws = self.ws
        if ws is None or not self.welcomed:
            return False
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            return False
        return True

    async def _resend(self, client_id: str) -> None:
        pending = self.pending.get(client_id)
        if pending is None:
            return
        if pending.attempts:
            self.tally.count("resends")
        pending.attempts += 1
        await self._send({"type": "send", "body": pending.body, "client_id": client_id})

    async def _resend_all(self) -> None:
        for client_id in list(self.pending):
            await self._resend(client_id)

    async def _send_loop(self) -> None:
        """Post a message every ``send_seconds`` on average (Poisson), keeping
        at most ``SEND_WINDOW`` unacknowledged; sends made while disconnected
        wait in ``pending`` for the next welcome, like a person's typing.
        """
        mean = self.send_seconds or 1.0
        while True:
            await asyncio.sleep(self.rng.expovariate(1 / mean))
            if not self.traffic.sending:
                return
            if len(self.pending) >= config.SEND_WINDOW:
                self.tally.count("send window full")
                continue
            if self.connected and self.rng.random() < config.TYPING_FRACTION:
                if await self._send({"type": "typing"}):
                    self.tally.count("typing sent")
                await asyncio.sleep(self.rng.uniform(0.1, 0.8))
                if not self.traffic.sending:  # it stopped while we "typed"
                    return
            self.counter += 1
            client_id = f"{self.name}-{self.counter}"
            body = self._body(client_id)
            self.pending[client_id] = Pending(body, time.monotonic())
            self.traffic.ledger_sent(self, client_id, body)
            self.tally.count("sends")
            await self._resend(client_id)

    def _body(self, client_id: str) -> str:
        words = self.rng.choices(config.BODY_WORDS, k=self.rng.randint(1, 30))
        return f"{client_id}: {' '.join(words)}"

    # --- history ---------------------------------------------------------------

    def _answer_history(self, frame: dict[str, Any]) -> None:
        waiter = self.history_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(frame)

    async def _history(self, **bounds: int) -> dict[str, Any] | None:
        """One ``history`` request, one at a time per connection; its answer
        (or None: refused, unanswered, or the connection ended)."""
        async with self.history_lock:
            waiter = asyncio.get_running_loop().create_future()
            self.history_waiter = waiter
            if not await self._send({"type": "history", **bounds}):
                self.history_waiter = None
                return None
            self.tally.count("history requests")
            try:
                async with asyncio.timeout(config.HISTORY_TIMEOUT_SECONDS):
                    answer = await waiter
            except TimeoutError:
                self.tally.anomaly("history unanswered", self)
                return None
            finally:
                self.history_waiter = None
        if answer.get("type") == "error":
            if answer.get("code") == "rate_limited":
                await asyncio.sleep(answer.get("retry_after_ms", 1000) / 1000)
            return None
        return answer

    async def _fill_gaps(self) -> None:
        """9.3 step 2 and 4: a gap open for 2 s, or an incomplete replay, is
        filled from ``history`` while ``has_more`` says there is more."""
        timeline = self.timeline
        while True:
            await asyncio.sleep(config.GAP_POLL_SECONDS)
            if not self.welcomed:
                continue
            if not timeline.has_gap:
                self.gap_since = None
                continue
            now = time.monotonic()
            if self.gap_since is None:
                self.gap_since = now
            if not self.fill_now and now - self.gap_since < config.GAP_WAIT_SECONDS:
                continue
            self.fill_now = False
            self.tally.count("gap fills")
            while timeline.has_gap:
                page = await self._history(after=timeline.contiguous, limit=100)
                if page is None or not page["has_more"]:
                    break
            self.gap_since = None

    async def _page_back(self) -> None:
        """Scroll back a few pages now and then, as a reader does."""
        while True:
            await asyncio.sleep(self.rng.uniform(*config.PAGING_SECONDS))
            if not self.welcomed or not self.traffic.churning:
                continue
            page = await self._history(limit=config.PAGE_LIMIT)
            for _ in range(config.PAGING_PAGES - 1):
                if page is None or not page["has_more"] or not page["messages"]:
                    break
                self.tally.count("history pages back")
                page = await self._history(
                    before=page["messages"][0]["seq"], limit=config.PAGE_LIMIT
                )

    # --- keeping the link honest, and churning --------------------------------

    async def _ping(self) -> None:
        """A ping every 20 s; nothing at all received for two of them means
        the link is dead (the web client's rule), which should not happen."""
        while True:
            await asyncio.sleep(config.PING_SECONDS)
            if time.monotonic() - self.last_frame_at > 2 * config.PING_SECONDS:
                self.tally.anomaly("dead link (no frame for 40 s)", self)
                self.own_close = True
                if self.ws is not None:
                    self.ws.transport.abort()
                return
            await self._send({"type": "ping"})

    async def _churn(self) -> None:
        """After 5-30 s: close and reconnect elsewhere (sometimes dropping TCP
        without a close, sometimes as a fresh tab that forgot everything)."""
        await asyncio.sleep(self.rng.uniform(*config.SESSION_SECONDS))
        while not self.traffic.churning:
            if self.traffic.finished:
                return
            await asyncio.sleep(1.0)
        ws = self.ws
        if ws is None or self.traffic.finished:
            return
        self.own_close = True
        roll = self.rng.random()
        if roll < config.FRESH_TAB_FRACTION:
            self.tally.count("fresh tabs (resume from 0)")
            self.timeline.reset()
        if roll > 1 - config.ABORT_FRACTION:
            self.tally.count("client drops TCP")
            ws.transport.abort()
        else:
            self.tally.count("client closes")
            await ws.close()


def _ms(pattern: re.Pattern[str], reason: str, default: int) -> int:
    found = pattern.search(reason or "")
    return int(found[1]) if found else default
