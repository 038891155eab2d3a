"""Limits shared through a real Redis: every instance counts against the
same buckets and slots, leases of a vanished process run out, and a Redis
outage leaves each process limiting on its own."""

import asyncio

import pytest

from core import limits
from harness.waiting import async_wait_until
from tests.integration.common import throwaway_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_limits(settings):
    for server in throwaway_redis():
        settings.REDIS_URL = server.url
        settings.REDIS_URLS = [server.url]  # as backend.settings makes them
        settings.REDIS_OPTIONS = {"socket_keepalive": True}
        settings.REDIS_SHARD_OPTIONS = [settings.REDIS_OPTIONS]
        settings.CHANNEL_PREFIX = "limits-test"
        limits.reset_for_tests()
        yield server
        limits.reset_for_tests()


def another_instance() -> None:
    """Forget this process's clients, as a second instance would have none."""
    limits.reset_for_tests()


def test_a_bucket_is_shared_by_instances(redis_limits):
    assert limits.take("send", "user:1", rate=1.0, burst=2) == 0.0
    another_instance()
    assert limits.take("send", "user:1", rate=1.0, burst=2) == 0.0
    another_instance()
    wait = limits.take("send", "user:1", rate=1.0, burst=2)
    assert 0.9 < wait <= 1.0
    assert limits.take("send", "user:2", rate=1.0, burst=2) == 0.0


async def test_the_async_bucket_refills_at_its_rate(redis_limits):
    assert await limits.atake("hs", "10.0.0.1", rate=20.0, burst=1) == 0.0
    wait = await limits.atake("hs", "10.0.0.1", rate=20.0, burst=1)
    assert 0 < wait <= 0.05
    await async_wait_until(
        lambda: limits.take("hs", "10.0.0.1", rate=20.0, burst=1) == 0.0,
        timeout=2,
    )


async def test_slots_are_shared_and_a_vanished_holders_lease_runs_out(
    redis_limits, monkeypatch
):
    monkeypatch.setattr(limits, "SLOT_LEASE_SECONDS", 1.0)
    first = limits.get_slots()
    assert await first.acquire("conn", "user:1", "a", limit=2)
    assert await first.acquire("conn", "user:1", "b", limit=2)
    # Another instance (its own Slots and Redis client) sees both held.
    limits._slots.clear()
    limits._async_clients.clear()
    if first.task is not None:
        first.task.cancel()  # the first instance dies: nobody renews its lease
    second = limits.get_slots()
    assert not await second.acquire("conn", "user:1", "c", limit=2)
    assert await second.acquire("conn", "user:2", "c", limit=2)

    await async_wait_until(
        lambda: second.acquire("conn", "user:1", "c", limit=2),
        timeout=5,
        message="the vanished holder's lease runs out",
    )


async def test_renewed_slots_outlive_their_lease(redis_limits, monkeypatch):
    monkeypatch.setattr(limits, "SLOT_LEASE_SECONDS", 0.5)
    monkeypatch.setattr(limits, "SLOT_RENEW_SECONDS", 0.1)
    slots = limits.get_slots()
    assert await slots.acquire("conn", "user:1", "a", limit=1)
    client = redis_limits.client()
    key = "limits-test:slots:conn:user:1"
    started = asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - started < 1.5:
        assert client.zscore(key, "a") is not None
        await asyncio.sleep(0.1)
    await slots.release("conn", "user:1", "a")
    assert client.zscore(key, "a") is None


async def test_a_redis_outage_leaves_each_process_limiting_alone(redis_limits):
    redis_limits.stop()
    assert limits.take("send", "user:1", rate=1.0, burst=1) == 0.0
    assert limits.take("send", "user:1", rate=1.0, burst=1) > 0
    slots = limits.get_slots()
    assert await slots.acquire("conn", "user:1", "a", limit=1)
    assert not await slots.acquire("conn", "user:1", "b", limit=1)
    await slots.release("conn", "user:1", "a")
    assert await slots.acquire("conn", "user:1", "b", limit=1)


async def test_a_slot_after_a_toll_is_one_call_with_both_rules(redis_limits):
    """A handshake's two limits in one script: no token, no slot tried; a
    token taken stays taken when every slot is held."""
    client = redis_limits.client()
    client.config_resetstat()
    slots = limits.get_slots()
    toll = limits.Toll("hs", "10.0.0.1", rate=1.0, burst=2)
    first = await slots.acquire_after_toll(toll, "conn", "user:1", "a", limit=1)
    assert first == limits.Acquired(True)
    assert client.info("commandstats")["cmdstat_eval"]["calls"] == 1

    # Slots full: refused as full, and the second token is spent anyway.
    full = await slots.acquire_after_toll(toll, "conn", "user:1", "b", limit=1)
    assert full == limits.Acquired(False)
    # Bucket empty: refused with its wait, and the free slot is not taken.
    empty = await slots.acquire_after_toll(toll, "conn", "user:2", "c", limit=1)
    assert not empty.admitted
    assert 0.9 < empty.toll_wait <= 1.0
    assert client.zcard("limits-test:slots:conn:user:2") == 0
    # Another address's bucket is its own.
    other = limits.Toll("hs", "10.0.0.2", rate=1.0, burst=2)
    assert (
        await slots.acquire_after_toll(other, "conn", "user:2", "c", limit=1)
    ).admitted
    await slots.release("conn", "user:1", "a")
    assert await slots.acquire("conn", "user:1", "b", limit=1)


async def test_a_slot_after_a_toll_without_redis_keeps_both_rules(redis_limits):
    redis_limits.stop()
    slots = limits.get_slots()
    toll = limits.Toll("hs", "10.0.0.1", rate=1.0, burst=2)
    assert (await slots.acquire_after_toll(toll, "conn", "user:1", "a", 1)).admitted
    assert await slots.acquire_after_toll(toll, "conn", "user:1", "b", 1) == (
        limits.Acquired(False)
    )
    empty = await slots.acquire_after_toll(toll, "conn", "user:2", "c", 1)
    assert not empty.admitted
    assert 0.9 < empty.toll_wait <= 1.0
    assert await slots.acquire("conn", "user:2", "c", limit=1)
