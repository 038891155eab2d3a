"""Unit-tier helpers: WebSocket clients against the real ASGI application."""

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from backend.asgi import application


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
