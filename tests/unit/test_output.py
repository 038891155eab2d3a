"""The output gate's rules, on write buffers whose unsent bytes the test sets.

(On real servers: tests/integration/test_output_gate.py.)
"""

import pytest

from core import output
from core.backpressure import WriteBuffer


class Buffer:
    """A connection's unsent bytes, as a server would report them."""

    def __init__(self, queued: int) -> None:
        self.bytes = queued

    def write_buffer(self) -> WriteBuffer:
        return WriteBuffer(
            offer=lambda frame: "declined", drop=lambda: None, queued=lambda: self.bytes
        )


@pytest.fixture
def process():
    fresh = output.ProcessOutput()
    real, output._process = output._process, fresh
    yield fresh
    output._process = real


async def test_the_connections_with_most_unsent_go_until_the_process_is_under(
    process, settings
):
    settings.OUTPUT_BUFFER_BYTES = 1000
    settings.OUTPUT_PROCESS_BYTES = 2500
    closed = []
    sizes = {"a": 900, "b": 100, "c": 1000, "d": 800}
    gates = {
        name: output.OutputGate(
            Buffer(size).write_buffer(), lambda reason, name=name: closed.append(name)
        )
        for name, size in sizes.items()
    }
    process.sample()
    assert process.queued == 2800
    # Largest first, and only until the total is under the budget.
    assert closed == ["c"]
    assert not gates["b"].keeping_up(), "no bulky output while over"
    process.sample()  # c no longer counts
    assert process.queued == 1800
    assert closed == ["c"]
    assert gates["b"].keeping_up()


async def test_one_connection_over_its_own_budget_and_bulky_output(process, settings):
    settings.OUTPUT_BUFFER_BYTES = 1000
    settings.OUTPUT_PROCESS_BYTES = 10**9
    buffer = Buffer(250)
    gate = output.OutputGate(buffer.write_buffer(), lambda reason: None)
    assert gate.keeping_up()
    assert not gate.over_budget()
    buffer.bytes = 251  # above a quarter: no replay page, no history answer
    assert not gate.keeping_up()
    assert not gate.over_budget()
    buffer.bytes = 1001
    assert gate.over_budget()
    assert not await gate.drained(timeout=0.05)
    buffer.bytes = 0
    assert await gate.drained(timeout=0.05)


async def test_a_server_whose_buffers_cannot_be_seen_is_not_guarded(process):
    gate = output.OutputGate(None, lambda reason: None)
    assert gate.keeping_up()
    assert not gate.over_budget()
    assert gate.queued() == 0
    assert len(process.gates) == 0
