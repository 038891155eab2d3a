"""The event-loop heartbeat (core.liveness) and ``/livez``.

The bookkeeping is driven with explicit ``time.monotonic()`` values; then the
real ASGI application answers ``/livez`` on a real loop that the test blocks
on purpose with ``time.sleep``. tests/integration/test_liveness.py does the
same to a real Daphne process, and loads one heavily.
"""

import asyncio
import contextlib
import json
import logging
import time

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.testing import HttpCommunicator

from backend.asgi import application
from core import liveness
from core.liveness import HEARTBEAT_INTERVAL_SECONDS, Heartbeat
from harness.waiting import async_wait_until

BOUND = 2.0
INTERVAL = HEARTBEAT_INTERVAL_SECONDS
T0 = 1000.0


def beats(heartbeat: Heartbeat, *lags: float) -> float:
    """Beat once per lag, each that much later than due; return the time."""
    now = heartbeat.last_beat
    for lag in lags:
        now += INTERVAL + lag
        heartbeat.beat(now)
    return now


# --- the heartbeat's bookkeeping -------------------------------------------


def test_a_fresh_heartbeat_is_alive() -> None:
    """Started by a request the loop serves: that loop runs, by definition."""
    verdict = Heartbeat(T0, bound_seconds=BOUND).check(T0)
    assert verdict.alive
    assert verdict.lag_seconds == verdict.worst_lag_seconds == 0.0


def test_a_beat_records_how_much_later_than_due_it_came() -> None:
    heartbeat = Heartbeat(T0, bound_seconds=BOUND)
    assert heartbeat.beat(T0 + INTERVAL) == 0.0
    assert heartbeat.beat(T0 + 2 * INTERVAL + 0.25) == pytest.approx(0.25)
    assert heartbeat.last_lag == pytest.approx(0.25)
    assert heartbeat.last_beat == T0 + 2 * INTERVAL + 0.25


@pytest.mark.parametrize(
    "lags",
    [
        pytest.param([0.0] * 40, id="idle"),
        pytest.param([0.05, 0.2, 0.4, 0.1] * 10, id="busy"),
        pytest.param([BOUND] * 10, id="late-by-the-bound-exactly"),
    ],
)
def test_lags_up_to_the_bound_are_alive(lags: list[float]) -> None:
    """A busy loop runs late by milliseconds; only past the bound is stuck."""
    heartbeat = Heartbeat(T0, bound_seconds=BOUND)
    now = T0
    for lag in lags:
        now = beats(heartbeat, lag)
        assert heartbeat.check(now).alive, (lag, heartbeat.check(now))


def test_a_beat_later_than_the_bound_fails_the_check_for_the_bound() -> None:
    """One stall past the bound: 503 until the loop has run a bound's span
    without one, then 200 again."""
    heartbeat = Heartbeat(T0, bound_seconds=BOUND)
    stalled_at = beats(heartbeat, 0.0, BOUND + 0.5)

    verdict = heartbeat.check(stalled_at)
    assert not verdict.alive
    assert verdict.worst_lag_seconds == pytest.approx(BOUND + 0.5)
    assert verdict.as_json()["status"] == "stalled"

    # On-time beats after it: failing while the stall is within the bound.
    on_time = int(BOUND / INTERVAL)
    now = beats(heartbeat, *[0.0] * (on_time - 1))
    assert not heartbeat.check(now).alive
    now = beats(heartbeat, 0.0, 0.0)
    assert heartbeat.check(now).alive
    assert heartbeat.check(now).as_json()["status"] == "ok"


def test_an_overdue_beat_fails_the_check_before_the_heartbeat_runs() -> None:
    """The probe may run before the late heartbeat does, right after a stall:
    the wait for the next beat counts, not only recorded beats."""
    heartbeat = Heartbeat(T0, bound_seconds=BOUND)
    beats(heartbeat, 0.0, 0.0)
    due = heartbeat.last_beat + INTERVAL

    assert heartbeat.check(due + BOUND).alive
    verdict = heartbeat.check(due + BOUND + 0.1)
    assert not verdict.alive
    assert verdict.lag_seconds == pytest.approx(BOUND + 0.1)
    assert heartbeat.lag(due + BOUND + 0.1) == pytest.approx(BOUND + 0.1)


def test_a_loop_stalled_most_of_the_time_fails_between_its_stalls() -> None:
    """Stalls past the bound with short gaps: every moment a probe could be
    answered, in a gap, fails."""
    heartbeat = Heartbeat(T0, bound_seconds=BOUND)
    now = T0
    for _ in range(5):
        now = beats(heartbeat, BOUND + 1.0)  # the beat right after a stall
        for into_gap in (0.0, 0.1, 0.2):
            assert not heartbeat.check(now + into_gap).alive


def test_the_lag_is_the_last_beats_or_the_overdue_wait_whichever_is_longer() -> None:
    heartbeat = Heartbeat(T0, bound_seconds=BOUND)
    now = beats(heartbeat, 0.3)
    assert heartbeat.lag(now) == pytest.approx(0.3)
    assert heartbeat.lag(now + INTERVAL + 1.0) == pytest.approx(1.0)
    now = beats(heartbeat, 0.0)
    assert heartbeat.lag(now) == 0.0


def test_only_beats_within_the_bound_are_kept() -> None:
    heartbeat = Heartbeat(T0, bound_seconds=BOUND)
    beats(heartbeat, *[0.0] * 100)
    assert len(heartbeat.recent) <= BOUND / INTERVAL + 1


# --- /livez on a real loop, through the real application -------------------


async def livez(*headers: tuple[bytes, bytes]) -> tuple[int, dict]:
    """GET /livez through ``backend.asgi.application``: (status, JSON)."""
    communicator = HttpCommunicator(application, "GET", "/livez", headers=list(headers))
    response = await communicator.get_response(timeout=2)
    assert (b"cache-control", b"no-store") in response["headers"]
    return response["status"], json.loads(response["body"])


def block_the_loop(seconds: float) -> None:
    """What a synchronous call on an async path does to every connection."""
    time.sleep(seconds)  # blocking the loop is the point


@pytest.fixture
def bound(settings) -> float:
    """The smallest bound the setting takes, so stalls stay short."""
    settings.LIVENESS_STALL_SECONDS = 1.0
    return 1.0


async def test_livez_answers_200_with_the_lag_and_the_bound(bound: float) -> None:
    status, body = await livez()
    assert status == 200
    assert body["status"] == "ok"
    assert body["stall_bound_seconds"] == bound
    assert 0.0 <= body["lag_seconds"] < bound


async def test_livez_ignores_the_host_and_the_https_redirect(settings) -> None:
    """Answered ahead of Django: the platform's probe has a Host of its own
    and comes over plain HTTP."""
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    status, body = await livez((b"host", b"10.244.3.7:8080"))
    assert status == 200, body


async def test_livez_fails_after_the_loop_was_blocked_then_recovers(
    bound: float, caplog
) -> None:
    """Blocked past the bound (plus the heartbeat interval): 503 naming the
    lag, a WARNING in the log, then 200 once a bound's span passed."""
    assert (await livez())[0] == 200  # starts this loop's heartbeat
    caplog.set_level(logging.WARNING, logger="core.liveness")

    block_the_loop(bound + INTERVAL + 0.5)
    status, body = await livez()
    blocked_until = time.monotonic()

    assert status == 503
    assert body["status"] == "stalled"
    assert body["worst_lag_seconds"] > bound
    assert liveness.latest_lag_seconds() > bound

    async def alive() -> bool:
        return (await livez())[0] == 200

    await async_wait_until(alive, timeout=bound + 3, message="/livez 200 again")
    recovered_after = time.monotonic() - blocked_until
    assert recovered_after <= bound + INTERVAL + 0.5
    assert any("event loop stalled" in r.getMessage() for r in caplog.records)


async def test_livez_stays_200_on_a_busy_loop(bound: float) -> None:
    """Many short blocks back to back (a loop with plenty to do): beats come
    late by up to a block, far below the bound, and /livez stays 200."""
    assert (await livez())[0] == 200
    statuses = []
    for _ in range(15):
        # Not a divisor of the interval: beats fall due inside blocks.
        block_the_loop(0.13)
        await asyncio.sleep(0)  # the loop runs everything due, then the next block
        statuses.append(await livez())
    worst = max(body["worst_lag_seconds"] for _, body in statuses)
    assert [status for status, _ in statuses] == [200] * 15
    assert 0.01 < worst < bound


async def test_livez_never_waits_for_an_http_turn(settings, bound: float) -> None:
    """The one turn of the HTTP queue held by a request whose body never
    ends: the next Django request waits, then gets 503; /livez answers at
    once."""
    settings.HTTP_CONCURRENCY = 1
    settings.HTTP_QUEUE_SECONDS = 0.2
    upload = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": "/api/rooms/",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
        },
    )
    await upload.send_input({"type": "http.request", "body": b"{", "more_body": True})
    try:
        queued = HttpCommunicator(application, "GET", "/readyz")
        busy = await queued.get_response(timeout=2)
        assert busy["status"] == 503
        assert b"busy" in busy["body"]  # core.admission's answer, not readyz's

        started = time.monotonic()
        status, _ = await livez()
        assert status == 200
        assert time.monotonic() - started < 0.1
    finally:
        upload.future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upload.future


async def test_one_heartbeat_per_loop() -> None:
    """Every request of a loop shares its heartbeat; the first starts it."""
    await livez()
    first = liveness.get_heartbeat()
    await livez()
    assert liveness.get_heartbeat() is first
    assert first.task is not None
    assert not first.task.done()


def test_latest_lag_is_zero_without_a_heartbeat() -> None:
    """Before any request started one (a metrics scrape at start-up)."""
    assert liveness.latest_lag_seconds() == 0.0
