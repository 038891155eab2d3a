"""A lean Server-Sent Events client for the load generator.

The same interface as ``bench.wsclient.WsClient`` (``opened``, ``done``,
``is_open``, ``close``, ``abort``, ``tag``), so the generator measures a
stream like a socket: each event's ``data:`` line is handed to ``on_text``
with the arrival time of its TCP read. It reads HTTP/1.1 chunked bodies
straight out of ``data_received``; it cannot send (a stream is read-only).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench.wsclient import HandshakeFailed

MAX_HEAD_BYTES = 16 * 1024


class SseClient(asyncio.Protocol):
    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        on_text: Callable[[Any, bytes, float], None] | None = None,
        tag: Any = None,
        **_: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path = host, port, path
        self.headers = headers or {}
        self.on_text = on_text
        self.tag = tag
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.head = True
        self.raw = bytearray()  # undecoded body (chunked)
        self.events = bytearray()  # decoded body, not yet a whole event
        self.close_code: int | None = None
        self.compressed = False
        self.frames_in = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: text/event-stream",
        ]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if self.head:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                if len(self.raw) > MAX_HEAD_BYTES:
                    self._fail(HandshakeFailed(0, "response head too long"))
                return
            status_line = bytes(self.raw[: self.raw.find(b"\r\n")])
            status = int(status_line.split(b" ", 2)[1])
            del self.raw[: end + 4]
            self.head = False
            if status != 200:
                self._fail(HandshakeFailed(status, status_line.decode("latin-1")))
                return
            self.opened.set_result(None)
        now = time.monotonic()
        self._dechunk()
        self._read_events(now)

    def _dechunk(self) -> None:
        raw = self.raw
        while True:
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(raw[:line_end]).split(b";")[0], 16)
            if size == 0:
                self.close()
                return
            if len(raw) < line_end + 2 + size + 2:
                return
            start = line_end + 2
            self.events += raw[start : start + size]
            del raw[: start + size + 2]

    def _read_events(self, now: float) -> None:
        events = self.events
        start = 0
        while True:
            end = events.find(b"\n\n", start)
            if end < 0:
                break
            block = bytes(events[start:end])
            start = end + 2
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    self.frames_in += 1
                    if b'"type": "close"' in line:
                        self.close_code = int(line.rsplit(b" ", 1)[1].rstrip(b"}"))
                    elif self.on_text is not None:
                        self.on_text(self, line[6:], now)
        del events[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                exc or HandshakeFailed(0, "connection closed before the response")
            )
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self.abort()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.done.done()

    def send_text(self, text: str) -> None:
        raise RuntimeError("a stream is read-only; publish over a socket")

    def close(self, code: int = 1000) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_sse_client(seconds: float, **kwargs: Any) -> SseClient:
    """Connect and read the response's status within ``seconds``."""
    loop = asyncio.get_running_loop()
    client = SseClient(**kwargs)
    try:
        async with asyncio.timeout(seconds):
            await loop.create_connection(lambda: client, client.host, client.port)
            await client.opened
    except BaseException:
        client.abort()
        raise
    return client
