"""Admission control through the real ASGI app: a bound on handshakes in
progress per process, a cheap 4503 with a retry hint past it, and a
deadline that cancels a handshake's work before the server would drop it.
"""

import re
import time

import pytest
from channels.testing import WebsocketCommunicator

from backend.asgi import application
from core import admission, consumers
from core.fanout import get_hub
from core.presence import RoomRef, get_presence
from core.servers import backpressure
from tests.unit.conftest import handshake_threads_busy, token_for, ws_path

pytestmark = pytest.mark.django_db(transaction=True)

HINT = re.compile(r"retry_window_ms=(\d+)")


async def refused_busy(slug: str, token: str | None = None) -> int:
    """Connect; expect 4503 with a retry window; return it in ms."""
    headers = [(b"authorization", f"Token {token}".encode())] if token else []
    communicator = WebsocketCommunicator(application, ws_path(slug), headers)
    try:
        accepted, _ = await communicator.connect(timeout=5)
        assert accepted, "a busy refusal is accepted first, to say why"
        close = await communicator.receive_output(timeout=5)
        assert close["type"] == "websocket.close", close
        assert close["code"] == admission.CLOSE_BUSY
        match = HINT.fullmatch(close["reason"])
        assert match, close["reason"]
        return int(match[1])
    finally:
        await communicator.disconnect()


async def test_past_the_bound_a_handshake_is_refused_with_a_hint(
    lobby, alice, settings
):
    settings.HANDSHAKE_CONCURRENCY = 2
    gate = admission.get_admission()
    held = [gate.try_enter(), gate.try_enter()]  # two handshakes under way
    token = await token_for(alice)
    hint = await refused_busy("lobby", token)
    assert hint >= admission.RETRY_MIN_SECONDS * 1000
    # Refused before any work: no connection counted, no presence.
    assert consumers.open_connections() == 0
    # One place frees: the next handshake goes through.
    held.pop().release(completed=True)
    communicator = WebsocketCommunicator(
        application, ws_path("lobby"), [(b"authorization", f"Token {token}".encode())]
    )
    accepted, _ = await communicator.connect(timeout=5)
    assert accepted
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    assert (await communicator.receive_json_from(timeout=5))["type"] == "presence"
    await communicator.disconnect()
    assert gate.in_progress == 1  # the one still held; the finished one left


async def test_the_hint_grows_with_the_crowd_and_stays_bounded(settings):
    settings.HANDSHAKE_CONCURRENCY = 2
    settings.HANDSHAKE_DEADLINE_SECONDS = 4.0
    gate = admission.get_admission()
    held = [gate.try_enter(), gate.try_enter()]
    assert None not in held
    hints = []
    for _ in range(3):
        for _ in range(5):
            assert gate.try_enter() is None
        hints.append(gate.retry_window())
    assert hints == sorted(hints), hints
    assert hints[0] < hints[-1], hints
    for _ in range(500):
        gate.try_enter()
    assert gate.retry_window() == admission.RETRY_MAX_SECONDS


async def test_a_handshake_past_its_deadline_is_cancelled_and_undone(
    lobby, alice, settings, monkeypatch
):
    """The handshakes' database threads are busy (slow queries ahead of the
    handshake's reads): at its deadline the handshake is answered with 4503, its queued
    reads never run, and nothing stays counted or joined."""
    settings.HANDSHAKE_DEADLINE_SECONDS = 0.5
    token = await token_for(alice)
    async with handshake_threads_busy(monkeypatch) as rooms_read:
        started = time.monotonic()
        hint = await refused_busy("lobby", token)
        assert time.monotonic() - started < 1.5, "answered at the deadline"
        assert hint > 0
    assert rooms_read == [], "the handshake's queued reads were cancelled"
    assert consumers.open_connections() == 0
    assert admission.get_admission().in_progress == 0
    assert not any(get_hub().members.values()), "left every group it joined"
    presence = await get_presence().frame(RoomRef(lobby.pk, "lobby"))
    assert presence["users"] == []
    assert presence["anonymous"] == 0


def test_the_output_gate_still_finds_the_socket_behind_admission():
    """The admission wrapper around ``send`` must not hide the server's
    socket from core.servers.backpressure (the output gate and direct writes)."""

    async def server_send(message):
        return None

    wrapped = admission._AnswerWatch(server_send).send
    assert backpressure._unwrap(wrapped) is server_send
