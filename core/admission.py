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
and closed with 4503, the reason ``retry_after_ms=<n>``. The hint grows with
the crowd: the handshakes waiting (in progress, and refused in the last
second) over the rate this process completes them, so retries arrive about
as fast as the process admits them. A handshake not accepted within
``HANDSHAKE_DEADLINE_SECONDS`` of its arrival is cancelled and answered the
same way, before the server drops it (Daphne after 5 s) and its work would
go on for nobody.
"""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

CLOSE_BUSY = 4503
SCOPE_KEY = "switchboard.handshake"
# What the application sends to answer a handshake (ends its deadline).
ANSWERS = frozenset({"websocket.accept", "websocket.close"})
RETRY_MIN_SECONDS = 0.25
RETRY_MAX_SECONDS = 15.0
# The rate is counted over windows this long.
WINDOW_SECONDS = 1.0

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
        self.refused = _Window()

    def try_enter(self) -> "Ticket | None":
        """A place for one handshake, or None past the bound."""
        if self.in_progress >= settings.HANDSHAKE_CONCURRENCY:
            self.refused.add()
            return None
        self.in_progress += 1
        return Ticket(self, time.monotonic() + settings.HANDSHAKE_DEADLINE_SECONDS)

    def retry_after(self) -> float:
        """Seconds a refused client should wait before it tries again."""
        # Before anything completed, assume the slowest rate that still
        # finishes a full house within the deadline.
        floor = settings.HANDSHAKE_CONCURRENCY / settings.HANDSHAKE_DEADLINE_SECONDS
        rate = max(self.completed.per_second(), floor)
        waiting = self.in_progress + self.refused.per_second()
        return min(max(waiting / rate, RETRY_MIN_SECONDS), RETRY_MAX_SECONDS)


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


def busy_reason(retry_after: float) -> str:
    return f"retry_after_ms={math.ceil(retry_after * 1000)}"


async def refuse_busy(receive: Receive, send: Send, retry_after: float) -> None:
    """Accept only to close with 4503 and the retry hint: the cheapest
    answer a client can tell from "no access" (a 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # gone already
    await send({"type": "websocket.accept"})
    await send(
        {
            "type": "websocket.close",
            "code": CLOSE_BUSY,
            "reason": busy_reason(retry_after),
        }
    )


class AdmissionMiddleware:
    """Outermost for WebSockets: a handshake past the bound costs nothing
    more than its refusal (no session, token or room read), and one past
    its deadline is cancelled wherever it waits (a read still queued for
    the database thread never runs)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = get_admission()
        ticket = admission.try_enter()
        if ticket is None:
            await refuse_busy(receive, send, admission.retry_after())
            return
        answered = False
        try:
            async with asyncio.timeout(ticket.deadline - time.monotonic()) as budget:

                async def send_answer(message: dict[str, Any]) -> None:
                    nonlocal answered
                    if not answered and message["type"] in ANSWERS:
                        answered = True
                        budget.reschedule(None)  # the deadline is met
                    await send(message)

                await self.app({**scope, SCOPE_KEY: ticket}, receive, send_answer)
        except TimeoutError:
            if answered:
                raise  # not the deadline's: it was off once answered
            await send({"type": "websocket.accept"})
            await send(
                {
                    "type": "websocket.close",
                    "code": CLOSE_BUSY,
                    "reason": busy_reason(admission.retry_after()),
                }
            )
        finally:
            ticket.release(completed=False)
