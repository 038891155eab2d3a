"""Full garbage collections wait out a surge of handshakes (core.collector):
young generations are collected as ever, the oldest waits until the surge
has been quiet a while or has lasted too long, and a surge that never ends
still gets its full collections."""

import gc

import pytest

from core import admission, collector
from tests.support.services import async_wait_until

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
