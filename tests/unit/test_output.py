"""The output gate's rules, on write buffers whose unsent bytes the test sets.

(On real servers: tests/integration/test_output_gate.py.)
"""

import asyncio

import pytest

from core import output
from core.servers.backpressure import WriteBuffer
from harness.waiting import async_wait_until


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
    buffer.bytes = 1000  # at the budget is not past it
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


PROCESS_BUDGET = "the process's unsent output passed its budget"


@pytest.mark.parametrize(
    ("sizes", "limit", "closed"),
    [
        # Exactly at the budget is not over it.
        ({"a": 600, "b": 400}, 1000, []),
        # Closing the largest brings the total to exactly the budget: enough.
        ({"a": 600, "b": 400, "c": 1}, 1000, ["a"]),
        # Equal sizes (no gate is compared with another), down to the last
        # one-byte connection while still over.
        ({"a": 2, "b": 1, "c": 1}, 1, ["a", "b"]),
        ({"a": 5, "b": 5, "c": 5}, 6, ["a", "b"]),
        # Connections with nothing unsent are never closed for the others.
        ({"a": 9, "b": 0, "c": 0}, 8, ["a"]),
    ],
)
async def test_the_process_budget_closes_the_fewest_largest_connections(
    process, settings, caplog, sizes, limit, closed
):
    settings.OUTPUT_BUFFER_BYTES = 10**9
    settings.OUTPUT_PROCESS_BYTES = limit
    reasons: dict[str, str] = {}
    gates = [  # held: the process keeps gates weakly
        output.OutputGate(
            Buffer(size).write_buffer(),
            lambda reason, name=name: reasons.__setitem__(name, reason),
        )
        for name, size in sizes.items()
    ]
    with caplog.at_level("WARNING", logger="core.output"):
        process.sample()
    total = sum(sizes.values())
    assert (process.queued, process.over) == (total, total > limit)
    # Which of equal connections goes is not defined; how many and how large is.
    assert sorted(sizes[n] for n in reasons) == sorted(sizes[n] for n in closed)
    if len(set(sizes.values())) == len(sizes):  # no ties: the largest first
        assert list(reasons) == closed
    assert set(reasons.values()) <= {PROCESS_BUDGET}
    warnings = [r.getMessage() for r in caplog.records if r.name == "core.output"]
    expected = (
        [
            f"unsent output of this process passed {limit} bytes; closed the "
            f"{len(closed)} connections with the most"
        ]
        if total > limit
        else []
    )
    assert warnings == expected
    assert len(gates) == len(sizes)


def test_nothing_is_counted_before_the_first_sample(process):
    """The metric reads the last sum: zero, not absent, until one is taken."""
    assert (process.queued, process.over) == (0, False)
    assert output._unsent_bytes() == 0.0


async def test_draining_waits_for_the_client_up_to_the_deadline(process, settings):
    settings.OUTPUT_BUFFER_BYTES = 1000
    buffer = Buffer(900)
    gate = output.OutputGate(buffer.write_buffer(), lambda reason: None)

    async def reads_later() -> None:
        await asyncio.sleep(0.05)  # the client is slow: time is the subject
        buffer.bytes = 0

    reader = asyncio.create_task(reads_later())
    assert await gate.drained(timeout=5)
    await reader


class FailingOnce(Buffer):
    """A buffer whose size cannot be read the first time it is asked."""

    def __init__(self, queued: int) -> None:
        super().__init__(queued)
        self.failed = False

    def write_buffer(self) -> WriteBuffer:
        def queued() -> int:
            if not self.failed:
                self.failed = True
                raise OSError("transport gone")
            return self.bytes

        return WriteBuffer(
            offer=lambda frame: "declined", drop=lambda: None, queued=queued
        )


async def test_one_sampler_runs_by_itself_survives_a_failure_and_stops_when_idle(
    process, settings, monkeypatch, caplog
):
    """Gates need nobody to call ``sample``: one task per process sums them
    every SAMPLE_SECONDS, logs a sample that fails and goes on, and once the
    last gate is gone it stops, leaving nothing counted."""
    monkeypatch.setattr(output, "SAMPLE_SECONDS", 0.01)
    settings.OUTPUT_BUFFER_BYTES = 10**9
    settings.OUTPUT_PROCESS_BYTES = 100
    closed = []
    with caplog.at_level("ERROR", logger="core.output"):
        flaky = output.OutputGate(FailingOnce(30).write_buffer(), closed.append)
        sampler = process.task
        big = output.OutputGate(Buffer(150).write_buffer(), closed.append)
        assert process.task is sampler, "a second sampler"
        await async_wait_until(
            lambda: closed, 5, 0.01, "the sampler closing the largest"
        )
    assert closed == [PROCESS_BUDGET]
    assert [r.getMessage() for r in caplog.records] == ["sampling unsent output failed"]
    assert process.queued == 180
    for gate in (flaky, big):
        gate.close()
    await async_wait_until(sampler.done, 5, 0.01, "the sampler stopping")
    assert (process.queued, process.over) == (0, False)
