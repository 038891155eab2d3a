"""Shared limits in process memory (no Redis): buckets and slots."""

import pytest

from core import limits
from core.ratelimit import TokenBucket
from tests.unit.conftest import FakeClock


@pytest.fixture(autouse=True)
def fresh_limits():
    limits.reset_for_tests()
    yield
    limits.reset_for_tests()


def test_a_bucket_admits_its_burst_then_says_how_long_to_wait():
    waits = [limits.take("send", "user:1", rate=2.0, burst=3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.4 < waits[3] <= 0.5  # one token every 0.5 s


def test_buckets_are_per_name_and_per_ident():
    for _ in range(3):
        assert limits.take("send", "user:1", rate=1.0, burst=3) == 0.0
    assert limits.take("send", "user:1", rate=1.0, burst=3) > 0
    assert limits.take("send", "user:2", rate=1.0, burst=3) == 0.0
    assert limits.take("typing", "user:1", rate=1.0, burst=3) == 0.0


def test_a_refused_take_costs_nothing():
    assert limits.take("x", "a", rate=1.0, burst=1) == 0.0
    first = limits.take("x", "a", rate=1.0, burst=1)
    second = limits.take("x", "a", rate=1.0, burst=1)
    # Refusals do not push the next token further away.
    assert second <= first


async def test_the_async_bucket_is_the_same_bucket():
    assert limits.take("send", "user:9", rate=1.0, burst=1) == 0.0
    assert await limits.atake("send", "user:9", rate=1.0, burst=1) > 0


async def test_slots_admit_up_to_the_limit_and_free_on_release():
    slots = limits.get_slots()
    assert await slots.acquire("conn", "user:1", "a", limit=2)
    assert await slots.acquire("conn", "user:1", "b", limit=2)
    assert not await slots.acquire("conn", "user:1", "c", limit=2)
    assert await slots.acquire("conn", "user:2", "c", limit=2)
    await slots.release("conn", "user:1", "a")
    assert await slots.acquire("conn", "user:1", "c", limit=2)
    # Releasing a slot never held, or twice, frees nothing extra.
    await slots.release("conn", "user:1", "a")
    await slots.release("conn", "user:1", "zzz")
    assert not await slots.acquire("conn", "user:1", "d", limit=2)


def test_the_first_token_of_a_full_bucket_is_never_refused(monkeypatch):
    """Float rounding once refused it at some clock readings."""
    for reading in (1537.457, 0.1, 86400.3, 12345.678901):
        monkeypatch.setattr(limits.time, "monotonic", lambda r=reading: r)
        limits.reset_for_tests()
        assert limits.take("demo", "x", rate=0.001, burst=1) == 0.0
        assert limits.take("demo", "x", rate=0.001, burst=1) > 0


def test_a_refused_caller_is_admitted_again_after_the_refill_interval(clock):
    """One token every 0.5 s: refused until exactly then, admitted once,
    and never more than the burst saved up however long it waits."""

    def take() -> float:
        return limits.take("send", "user:1", rate=2.0, burst=2)

    assert [take(), take()] == [0.0, 0.0]  # at 1000.0
    assert take() == 0.5
    clock.now = 1000.25
    assert take() == 0.25  # refused, told the rest of the wait
    clock.now = 1000.499
    assert take() > 0, "admitted before the interval"
    clock.now = 1000.5
    assert take() == 0.0, "still refused after the interval"
    assert take() == 0.5, "one interval refilled more than one token"
    clock.now = 5000.0
    assert [take(), take()] == [0.0, 0.0]
    assert take() > 0, "refilled beyond the burst"


def test_the_token_bucket_refills_by_its_injected_clock():
    """core.ratelimit.TokenBucket, the same rules with the clock passed in."""
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() == 0.5
    clock.now += 0.25
    assert bucket.take() == 0.25  # refused, told the rest of the wait
    clock.now += 0.25
    assert bucket.take() == 0.0, "still refused after the interval"
    assert bucket.take() == 0.5, "one interval refilled more than one token"
    clock.now += 3600
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() > 0, "refilled beyond the burst"


def test_full_buckets_are_forgotten_once_there_are_very_many(clock):
    """Memory stays bounded: past 100,000 buckets (not at it), those full
    again (their last token back by now) are dropped, which changes no
    answer."""
    memory = limits._Memory()
    for n in range(99_999):
        assert memory.take(f"address:{n}", rate=1.0, burst=5) == 0.0
    clock.now += 1.0  # every one of them is exactly full again
    memory.take("one more", rate=1.0, burst=1)
    assert len(memory.buckets) == 100_000, "forgotten at the bound, not past it"
    memory.take("and another", rate=1.0, burst=1)
    assert sorted(memory.buckets) == ["and another", "one more"]
    assert memory.take("address:7", rate=1.0, burst=5) == 0.0
