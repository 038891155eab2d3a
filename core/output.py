"""The output gate: what a connection may be sent, by its unsent bytes.

A WebSocket server queues whatever an application sends; a client that does
not read makes that queue grow. Every frame a ``RoomConsumer`` sends passes
its ``OutputGate``, which knows the connection's unsent bytes (through
``core.servers.backpressure``) and holds two rules:

- **Per connection**: past ``OUTPUT_BUFFER_BYTES`` unsent, the connection is
  closed as too slow (close code 4008). Bulky output (replays, history pages)
  is produced only while the client keeps up: below a quarter of the budget.
- **Per process**: a sampler sums every connection's unsent bytes each
  ``SAMPLE_SECONDS``; past ``OUTPUT_PROCESS_BYTES`` it closes the connections
  with the most unsent output until the total is back under, and until then
  no connection counts as keeping up.

On a server whose buffers ``core.servers.backpressure`` cannot see, nothing is
queued as far as the gate knows, and nothing is refused.
"""

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

from django.conf import settings

from core import metrics
from core.servers.backpressure import WriteBuffer

logger = logging.getLogger(__name__)

SAMPLE_SECONDS = 1.0
DRAIN_POLL_SECONDS = 0.02


class OutputGate:
    """One connection's output, against its budget and the process's."""

    __slots__ = ("__weakref__", "budget", "buffer", "low_water", "on_over")

    def __init__(
        self, buffer: WriteBuffer | None, on_over: Callable[[str], None]
    ) -> None:
        self.buffer = buffer
        self.budget = settings.OUTPUT_BUFFER_BYTES
        self.low_water = self.budget // 4
        # Called once the connection must go; it closes the connection.
        self.on_over = on_over
        if buffer is not None:
            _process.add(self)

    def queued(self) -> int:
        """Bytes sent to this connection that its client has not taken."""
        return self.buffer.queued() if self.buffer is not None else 0

    def over_budget(self) -> bool:
        """True once the client has stopped keeping up for good."""
        return self.buffer is not None and self.buffer.queued() > self.budget

    def keeping_up(self) -> bool:
        """True while bulky output may be produced for this connection."""
        if self.buffer is None:
            return True
        return self.buffer.queued() <= self.low_water and not _process.over

    async def drained(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the client keeps up; False if it has not within
        ``timeout`` seconds (a deadline, so the caller can drop it)."""
        deadline = time.monotonic() + timeout
        while not self.keeping_up():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return True

    def close(self) -> None:
        """The connection has gone: stop counting it."""
        _process.discard(self)
        # on_over is the consumer's method, and the consumer holds this gate:
        # a cycle, which would leave the whole closed connection (some 75
        # objects) for a full collection instead of freeing it at once.
        self.on_over = _gone


def _gone(reason: str) -> None:
    """A closed gate's ``on_over``: its connection has gone already."""


class ProcessOutput:
    """Every gate of this process, and their unsent bytes together."""

    def __init__(self) -> None:
        self.gates: weakref.WeakSet[OutputGate] = weakref.WeakSet()
        self.over = False
        self.task: asyncio.Task[None] | None = None
        # The total at the last sample, for operators and tests.
        self.queued = 0

    def add(self, gate: OutputGate) -> None:
        self.gates.add(gate)
        task, loop = self.task, asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            self.task = loop.create_task(self._sample_forever())

    def discard(self, gate: OutputGate) -> None:
        self.gates.discard(gate)

    async def _sample_forever(self) -> None:
        while self.gates:
            await asyncio.sleep(SAMPLE_SECONDS)
            try:
                self.sample()
            except Exception:
                logger.exception("sampling unsent output failed")
        self.over = False
        self.queued = 0

    def sample(self) -> None:
        """Sum unsent bytes; past the process budget, close the largest."""
        limit = settings.OUTPUT_PROCESS_BYTES
        sizes = [(gate.queued(), gate) for gate in list(self.gates)]
        total = sum(size for size, _ in sizes)
        self.queued = total
        self.over = total > limit
        if not self.over:
            return
        sizes.sort(key=lambda pair: pair[0], reverse=True)
        dropped = 0
        for size, gate in sizes:
            if total <= limit or size == 0:
                break
            total -= size
            dropped += 1
            self.discard(gate)
            gate.on_over("the process's unsent output passed its budget")
        logger.warning(
            "unsent output of this process passed %d bytes; closed the %d "
            "connections with the most",
            limit,
            dropped,
        )


_process = ProcessOutput()


@metrics.reading(
    "switchboard_unsent_output_bytes",
    "Bytes written to this process's sockets and not yet sent, at the last "
    "once-a-second sum (the budget is SWITCHBOARD_OUTPUT_PROCESS_BYTES).",
)
def _unsent_bytes() -> float:
    return float(_process.queued)
