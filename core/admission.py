"""Admission control: a process starts no more handshakes than it can finish.

When an instance goes away (every deploy on App Platform), all of its
clients reconnect to the others at once. Without a bound, every handshake
starts its database and Redis work, each gets slower, Daphne drops those not
accepted within its connect timeout (5 s) while their work goes on, the
clients retry, and the instance never catches up (docs/deploy.md).

So each process lets at most ``HANDSHAKE_CONCURRENCY`` handshakes be in
progress, from the moment the server hands one over until the consumer has
sent its welcome, replay and presence, or refused it. Past the bound a
handshake is answered at once, before any database or Redis work: accepted
and closed with 4503, the reason ``retry_window_ms=<n>``: retry at a random
moment within the next n ms. The window grows with the crowd: the handshakes
waiting over the rate this process completes them, so retries arrive about
as fast as the process admits them. A handshake not accepted within
``HANDSHAKE_DEADLINE_SECONDS`` of its arrival is cancelled and answered the
same way, before the server drops it (Daphne after 5 s) and its work would
go on for nobody.
"""

import asyncio
import json
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.conf import settings

from core import metrics
from core.collector import get_collector
from core.middleware import HEALTH_PATH

CLOSE_BUSY = 4503
SCOPE_KEY = "switchboard.handshake"
# What the application sends to answer a handshake (ends its deadline): a
# socket's accept or close, a Server-Sent Events stream's response headers.
ANSWERS = frozenset({"websocket.accept", "websocket.close", "http.response.start"})
RETRY_MIN_SECONDS = 0.25
RETRY_MAX_SECONDS = 15.0
# The rate is counted over windows this long.
WINDOW_SECONDS = 1.0

T = TypeVar("T")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _Window:
    """Events counted in the current and the previous window."""

    __slots__ = ("current", "previous", "started")

    def __init__(self) -> None:
        self.current = 0
        self.previous = 0
        self.started = time.monotonic()

    def _roll(self, now: float) -> None:
        elapsed = now - self.started
        if elapsed >= WINDOW_SECONDS:
            self.previous = self.current if elapsed < 2 * WINDOW_SECONDS else 0
            self.current = 0
            self.started = now - elapsed % WINDOW_SECONDS

    def add(self) -> None:
        self._roll(time.monotonic())
        self.current += 1

    def per_second(self) -> float:
        """Events in the last second, the previous window's weighed in."""
        now = time.monotonic()
        self._roll(now)
        into = (now - self.started) / WINDOW_SECONDS
        return (self.current + self.previous * (1 - into)) / WINDOW_SECONDS


class Admission:
    """The handshakes this process has in progress, and how fast they go."""

    def __init__(self) -> None:
        self.in_progress = 0
        self.completed = _Window()
        # When recent handshakes were refused (within the last window told).
        self.refused: deque[float] = deque()
        self.window = RETRY_MIN_SECONDS

    def try_enter(self) -> "Ticket | None":
        """A place for one handshake, or None past the bound."""
        now = time.monotonic()
        if self.in_progress >= settings.HANDSHAKE_CONCURRENCY:
            self.refused.append(now)
            return None
        self.in_progress += 1
        get_collector().handshakes_in_progress(self.in_progress)
        return Ticket(self, now + settings.HANDSHAKE_DEADLINE_SECONDS)

    def retry_window(self) -> float:
        """Over how many seconds refused clients should spread their retries.

        Long enough for this process to admit everyone waiting: those in
        progress and those refused within the last window, at the rate it
        completes handshakes. Then retries arrive about as fast as
        handshakes are admitted.
        """
        now = time.monotonic()
        refused = self.refused
        while refused and refused[0] < now - max(self.window, WINDOW_SECONDS):
            refused.popleft()
        # Before anything completed, assume the slowest rate that still
        # finishes a full house within the deadline.
        floor = settings.HANDSHAKE_CONCURRENCY / settings.HANDSHAKE_DEADLINE_SECONDS
        rate = max(self.completed.per_second(), floor)
        # A client retrying at a random moment of the window comes back
        # twice per window on average: each was refused about twice.
        waiting = self.in_progress + len(refused) / 2
        self.window = min(max(waiting / rate, RETRY_MIN_SECONDS), RETRY_MAX_SECONDS)
        return self.window


class Ticket:
    """One handshake's place; released once, when the handshake is over."""

    __slots__ = ("admission", "deadline", "released")

    def __init__(self, admission: Admission, deadline: float) -> None:
        self.admission = admission
        # time.monotonic() by which the handshake must have been accepted.
        self.deadline = deadline
        self.released = False

    def release(self, *, completed: bool) -> None:
        if self.released:
            return
        self.released = True
        self.admission.in_progress -= 1
        if completed:
            self.admission.completed.add()


_admission = Admission()


def get_admission() -> Admission:
    return _admission


def reset_for_tests() -> None:
    """Forget every count (tests)."""
    global _admission
    _admission = Admission()


def busy_reason(window: float) -> str:
    return f"retry_window_ms={math.ceil(window * 1000)}"


_BUSY = metrics.handshakes.labels("busy")


async def refuse_busy(
    scope: Scope, receive: Receive, send: Send, window: float
) -> None:
    """The cheapest answer a client can tell from "no access" (a 403).

    A socket is accepted only to be closed with 4503 and the retry window.
    A stream (``/sse/``) gets 503 with ``Retry-After`` and an error body:
    ``EventSource`` sees neither, and backs off as from any failed attempt.
    """
    _BUSY.inc()
    if scope["type"] == "http":
        await send_busy_response(send, window)
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # gone already
    await send({"type": "websocket.accept"})
    await send(
        {
            "type": "websocket.close",
            "code": CLOSE_BUSY,
            "reason": busy_reason(window),
        }
    )


async def send_busy_response(send: Send, window: float) -> None:
    """503 for a stream refused by admission control."""
    # Clients retrying at a random moment of the window spread out as
    # sockets do; Retry-After is its upper end, in whole seconds.
    body = json.dumps(
        {
            "type": "error",
            "code": "server_busy",
            "detail": "This server is busy; try again shortly.",
            "retry_window_ms": math.ceil(window * 1000),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(math.ceil(window)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _AnswerWatch:
    """The handshake's ``send``: the first answer (accept or close) ends
    its deadline. Shaped like Channels' session wrapper (``real_send``), so
    core.servers.backpressure still finds the server's socket behind it."""

    __slots__ = ("answered", "budget", "real_send")

    def __init__(self, real_send: Send) -> None:
        self.real_send = real_send
        self.budget: asyncio.Timeout | None = None
        self.answered = False

    async def send(self, message: dict[str, Any]) -> None:
        if not self.answered and message["type"] in ANSWERS:
            self.answered = True
            if self.budget is not None:
                self.budget.reschedule(None)  # the deadline is met
        await self.real_send(message)


class AdmissionMiddleware:
    """Outermost for WebSockets and streams: a handshake past the bound
    costs nothing more than its refusal (no session, token or room read),
    and one past its deadline is cancelled wherever it waits (a read still
    queued for the database thread never runs). Sockets and streams share
    the bound: both open a room the same way."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = get_admission()
        ticket = admission.try_enter()
        if ticket is None:
            await refuse_busy(scope, receive, send, admission.retry_window())
            return
        watch = _AnswerWatch(send)
        try:
            async with asyncio.timeout(ticket.deadline - time.monotonic()) as budget:
                watch.budget = budget
                # Added to, not copied: the server made this scope for this
                # connection alone, and a copy would live as long as it does.
                scope[SCOPE_KEY] = ticket
                await self.app(scope, receive, watch.send)
        except TimeoutError:
            if watch.answered:
                raise  # not the deadline's: it was off once answered
            _BUSY.inc()
            if scope["type"] == "http":
                await send_busy_response(send, admission.retry_window())
                return
            await send({"type": "websocket.accept"})
            await send(
                {
                    "type": "websocket.close",
                    "code": CLOSE_BUSY,
                    "reason": busy_reason(admission.retry_window()),
                }
            )
        finally:
            ticket.release(completed=False)


class HttpAdmission:
    """At most ``HTTP_CONCURRENCY`` HTTP requests of a process in Django.

    Django runs each request's synchronous code on a thread of its own, so
    a crowd of slow requests (a slow query, a wait for a pool connection)
    would make as many threads, each holding memory and waiting on the same
    pool. Past the bound a request waits up to ``HTTP_QUEUE_SECONDS`` for a
    turn, then gets 503 with ``Retry-After``. ``/healthz`` never waits: App
    Platform would restart a busy but healthy instance.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._turns: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        turns = self._turns.get(loop)
        if turns is None:
            turns = self._turns[loop] = asyncio.Semaphore(settings.HTTP_CONCURRENCY)
        return turns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            metrics.ensure_snapshots()  # the platform's checks reach every instance
        if scope["type"] != "http" or scope["path"].rstrip("/") == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        turns = self._semaphore()
        try:
            async with asyncio.timeout(settings.HTTP_QUEUE_SECONDS):
                await turns.acquire()
        except TimeoutError:
            await _busy(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            turns.release()


async def _busy(send: Send) -> None:
    body = json.dumps({"detail": "This server is busy; try again shortly."})
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", b"1"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
