"""Full garbage collections wait out a surge of handshakes (core.collector):
young generations are collected as ever, the oldest waits until the surge
has been quiet a while or has lasted too long, and a surge that never ends
still gets its full collections."""

import asyncio
import gc

import pytest

from core import admission, collector
from harness.waiting import async_wait_until

DEFAULTS = (700, 10, 10)


@pytest.fixture(autouse=True)
def python_defaults():
    saved = gc.get_threshold()
    gc.set_threshold(*DEFAULTS)
    yield
    collector.reset_for_tests()
    gc.set_threshold(*saved)


async def test_a_surge_defers_full_collections_only():
    surges = collector.get_collector()
    surges.handshakes_in_progress(collector.SURGE_HANDSHAKES - 1)
    assert gc.get_threshold() == DEFAULTS
    surges.handshakes_in_progress(collector.SURGE_HANDSHAKES)
    assert gc.get_threshold() == (700, 10, collector.DEFERRED_THRESHOLD)


async def test_thresholds_come_back_once_the_surge_is_quiet(monkeypatch):
    monkeypatch.setattr(collector, "QUIET_SECONDS", 0.2)
    surges = collector.get_collector()
    surges.handshakes_in_progress(collector.SURGE_HANDSHAKES)
    assert surges.deferring
    await async_wait_until(lambda: gc.get_threshold() == DEFAULTS, timeout=5)
    # Quiet, not cut short: the next surge defers again at once.
    surges.handshakes_in_progress(collector.SURGE_HANDSHAKES)
    assert surges.deferring


async def test_a_surge_that_lasts_still_collects(monkeypatch):
    monkeypatch.setattr(collector, "QUIET_SECONDS", 0.1)
    monkeypatch.setattr(collector, "MAX_DEFER_SECONDS", 0.3)
    # Python's own full collections never come in this test: only ours.
    rare = (700, 10, 10**6)
    gc.set_threshold(*rare)
    surges = collector.get_collector()

    def surging() -> bool:
        surges.handshakes_in_progress(collector.SURGE_HANDSHAKES)
        return gc.get_threshold() == rare

    # Still surging at every check, yet the deferral ends.
    await async_wait_until(surging, timeout=5, interval=0.02)
    assert not surges.deferring
    surges.handshakes_in_progress(collector.SURGE_HANDSHAKES)
    assert not surges.deferring, "no new deferral before a full collection"
    gc.collect()
    surges.handshakes_in_progress(collector.SURGE_HANDSHAKES)
    assert surges.deferring


async def test_admission_reports_its_handshakes_in_progress(settings):
    settings.HANDSHAKE_CONCURRENCY = 64
    admitted = admission.get_admission()
    tickets = [admitted.try_enter() for _ in range(collector.SURGE_HANDSHAKES - 1)]
    assert gc.get_threshold() == DEFAULTS
    tickets.append(admitted.try_enter())
    assert gc.get_threshold()[2] == collector.DEFERRED_THRESHOLD
    for ticket in tickets:
        ticket.release(completed=True)


def _histogram_count() -> float:
    from core import metrics

    return metrics.REGISTRY.get_sample_value(
        "switchboard_gc_full_collection_seconds_count"
    )


async def test_full_collections_are_timed_and_long_ones_logged(monkeypatch, caplog):
    surges = collector.get_collector()
    before = _histogram_count() or 0.0
    gc.collect(1)  # a young collection is not a pause worth counting
    assert (_histogram_count() or 0.0) == before
    # Every full collection is a sample; one past the bound is also a line.
    monkeypatch.setattr(collector, "LONG_PAUSE_SECONDS", 0.0)
    with caplog.at_level("INFO", logger="core.collector"):
        gc.collect()
        assert _histogram_count() == before + 1
        await async_wait_until(
            lambda: "a full garbage collection paused the process" in caplog.text,
            timeout=5,
        )
    monkeypatch.setattr(collector, "LONG_PAUSE_SECONDS", 60.0)
    caplog.clear()
    gc.collect()
    assert _histogram_count() == before + 2
    assert surges.loop is not None
    await asyncio.sleep(0)
    assert "paused" not in caplog.text


def _full_collections() -> int:
    return gc.get_stats()[2]["collections"]


async def test_a_wave_of_closes_is_collected_while_few_are_connected(monkeypatch):
    monkeypatch.setattr(collector, "GARBAGE_CONNECTIONS", 10)
    monkeypatch.setattr(collector, "COLLECT_AFTER_CLOSES_SECONDS", 0.05)
    gc.set_threshold(700, 10, 10**6)  # Python's own full collections: never
    surges = collector.get_collector()
    before = _full_collections()

    # Fewer closed than the bound, or than those still open: no collection.
    for left in range(100, 91, -1):
        surges.connection_closed(still_open=left)
    for left in range(90, 50, -1):
        surges.connection_closed(still_open=left)
    await asyncio.sleep(0.2)
    assert _full_collections() == before

    # Once the closed outnumber the open, one collection, soon.
    for left in range(50, 40, -1):
        surges.connection_closed(still_open=left)
    await async_wait_until(lambda: _full_collections() == before + 1, timeout=5)
    assert surges.closed_since_full == 0
    await asyncio.sleep(0.2)
    assert _full_collections() == before + 1


async def test_closes_during_a_surge_wait_for_the_surge(monkeypatch):
    monkeypatch.setattr(collector, "GARBAGE_CONNECTIONS", 10)
    monkeypatch.setattr(collector, "QUIET_SECONDS", 0.6)
    monkeypatch.setattr(collector, "COLLECT_AFTER_CLOSES_SECONDS", 0.05)
    gc.set_threshold(700, 10, 10**6)
    surges = collector.get_collector()
    surges.handshakes_in_progress(collector.SURGE_HANDSHAKES)
    before = _full_collections()
    for _ in range(20):
        surges.connection_closed(still_open=0)
    await asyncio.sleep(0.2)
    assert _full_collections() == before, "no collection in the middle of a surge"
    # Once the surge is quiet, the garbage it waited out is collected.
    await async_wait_until(lambda: not surges.deferring, timeout=5)
    await async_wait_until(lambda: _full_collections() == before + 1, timeout=5)
    assert surges.closed_since_full == 0
