"""Unit-tier helpers: WebSocket clients against the real ASGI application."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from backend.asgi import application
from tests.factories import RoomFactory, UserFactory

# --- the usual room and users (async tests) ------------------------------------


@pytest.fixture
async def lobby() -> Any:
    return await database_sync_to_async(RoomFactory)(slug="lobby", name="Lobby")


@pytest.fixture
async def alice() -> Any:
    return await database_sync_to_async(UserFactory)(username="alice")


@pytest.fixture
async def bob() -> Any:
    return await database_sync_to_async(UserFactory)(username="bob")


def ws_path(slug: str, query: str = "") -> str:
    return f"/ws/rooms/{slug}/" + (f"?{query}" if query else "")


@asynccontextmanager
async def connected(
    slug: str,
    *,
    token: str | None = None,
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    skip_greeting: bool = True,
) -> AsyncIterator[WebsocketCommunicator]:
    """An accepted connection; by default its welcome and presence are read."""
    all_headers = list(headers or [])
    if token is not None:
        all_headers.append((b"authorization", f"Token {token}".encode()))
    communicator = WebsocketCommunicator(application, ws_path(slug, query), all_headers)
    try:
        connected_ok, code = await communicator.connect(timeout=5)
        assert connected_ok, f"handshake refused ({code})"
        if skip_greeting and not query:
            welcome = await communicator.receive_json_from(timeout=5)
            assert welcome["type"] == "welcome"
            presence = await communicator.receive_json_from(timeout=5)
            assert presence["type"] == "presence"
        yield communicator
    finally:
        await communicator.disconnect()


async def refused(slug: str, **kwargs: Any) -> int | None:
    """Connect and return the refusal code, failing if the handshake is accepted."""
    headers = list(kwargs.get("headers") or [])
    if kwargs.get("token"):
        headers.append((b"authorization", f"Token {kwargs['token']}".encode()))
    communicator = WebsocketCommunicator(application, ws_path(slug), headers)
    try:
        accepted, code = await communicator.connect(timeout=5)
        assert not accepted, "handshake was accepted"
        return code
    finally:
        await communicator.disconnect()


async def send_json(communicator: WebsocketCommunicator, frame: Any) -> None:
    await communicator.send_to(text_data=json.dumps(frame))


async def receive_until(
    communicator: WebsocketCommunicator,
    predicate: Callable[[dict], bool],
    timeout: float = 5,  # noqa: ASYNC109 - per frame, as receive_json_from takes it
) -> tuple[dict, list[dict]]:
    """Read frames until one matches; return it and the ones before it."""
    skipped = []
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        if predicate(frame):
            return frame, skipped
        skipped.append(frame)


@database_sync_to_async
def token_for(user: Any) -> str:
    return Token.objects.get_or_create(user=user)[0].key


@pytest.fixture
def token_of():
    return token_for


# --- time ------------------------------------------------------------------------


class FakeClock:
    """A clock that moves only when told: core.limits' ``time`` (through the
    ``clock`` fixture), or a clock passed in (it is callable)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """core.limits' process-memory buckets read this clock."""
    from core import limits

    fake = FakeClock()
    monkeypatch.setattr(limits, "time", fake)
    return fake


# --- the channel layer ---------------------------------------------------------


@pytest.fixture
def listen():
    """Add a test channel to a channel-layer group; read what it receives."""
    layer = get_channel_layer()
    joined = []

    def join(group: str) -> str:
        channel = async_to_sync(layer.new_channel)("test.")
        async_to_sync(layer.group_add)(group, channel)
        joined.append((group, channel))
        return channel

    yield join
    for group, channel in joined:
        async_to_sync(layer.group_discard)(group, channel)


def next_event(channel: str, timeout: float = 2) -> dict:
    """The next event on ``channel``, after a JSON round trip (as on Redis)."""

    async def receive() -> dict:
        return await asyncio.wait_for(get_channel_layer().receive(channel), timeout)

    event = async_to_sync(receive)()
    assert json.loads(json.dumps(event)) == event, "event is not plain JSON"
    return event


@asynccontextmanager
async def handshake_threads_busy(monkeypatch: Any) -> AsyncIterator[list[str]]:
    """Both handshake database threads held by slow queries (2 s) queued
    ahead of whatever comes next; yields the slugs of rooms opened while
    they were held, and waits for the slow queries on the way out."""
    from core import db, services

    rooms_read: list[str] = []
    open_room = services.open_room

    def recorded_open_room(**kwargs: Any) -> Any:
        rooms_read.append(kwargs["slug"])
        return open_room(**kwargs)

    monkeypatch.setattr(services, "open_room", recorded_open_room)
    slow_queries = [
        asyncio.create_task(db.run_handshake(time.sleep)(2.0)) for _ in "ab"
    ]
    await asyncio.sleep(0)  # the slow queries take both threads first
    try:
        yield rooms_read
    finally:
        await asyncio.gather(*slow_queries)
