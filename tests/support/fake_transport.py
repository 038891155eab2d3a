"""A WebSocket connection with no socket, for the unit tier.

The production delivery path writes frames straight to the server's
transport (``core.servers.backpressure``), past ASGI, so ``WebsocketCommunicator``,
which is plain ASGI, never reaches it. Here the server end is uvicorn's own
WebSocket protocol (``websockets-sansio``, the implementation
``core.servers.backpressure`` reads) and the client end is websockets' sans-I/O
client; between them sits ``MemoryTransport``, an asyncio transport whose
written bytes wait in memory until the client reads them. Nothing of the
application is replaced: a client that stops reading makes the server's
write buffer grow exactly as a socket would, and every byte the client reads
is parsed by an independent WebSocket implementation.
"""

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol,
)
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from backend.asgi import application

# asyncio's defaults for a transport's write buffer.
DEFAULT_HIGH_WATER = 64 * 1024


class MemoryTransport(asyncio.Transport):
    """The server's end of a connection: what it writes waits here, unread,
    until the client takes it, and counts as queued meanwhile."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__(
            extra={"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}
        )
        self.protocol = protocol
        self.unread = bytearray()
        self.written = asyncio.Event()
        self.high = DEFAULT_HIGH_WATER
        self.low = DEFAULT_HIGH_WATER // 4
        self.paused = False
        self.closing = False
        self.aborted = False
        self.lost = False

    # asyncio.WriteTransport, as far as the server uses it.
    def write(self, data: bytes) -> None:
        if self.lost:
            return  # as asyncio does once the connection is lost
        self.unread += data
        self.written.set()
        if not self.paused and len(self.unread) > self.high:
            self.paused = True
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return len(self.unread)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.low, self.high

    def set_write_buffer_limits(
        self, high: int | None = None, low: int | None = None
    ) -> None:
        self.high = DEFAULT_HIGH_WATER if high is None else high
        self.low = self.high // 4 if low is None else low

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """Close after the client has read what is queued, as asyncio does."""
        self.closing = True
        if not self.unread:
            self._lose()

    def abort(self) -> None:
        """Cut the connection off now, dropping what is queued."""
        self.aborted = self.closing = True
        self.unread.clear()
        self._lose()

    # asyncio.ReadTransport: the client's bytes are handed over directly.
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self.closing

    # The client's side.
    def take(self, most: int | None = None) -> bytes:
        """What was written and not yet read (at most ``most`` bytes): the
        client reads it."""
        most = len(self.unread) if most is None else most
        data = bytes(self.unread[:most])
        del self.unread[:most]
        if not self.unread:
            self.written.clear()
        if self.paused and len(self.unread) <= self.low:
            self.paused = False
            self.protocol.resume_writing()
        if self.closing and not self.unread:
            self._lose()
        return data

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.written.set()  # wakes a reader: nothing more will come
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


class Server(WebSocketsSansIOProtocol):
    """uvicorn's protocol, noting the text of each frame the application
    sends through ASGI (the frames written past ASGI are the rest)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asgi_texts: list[str] = []

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.send" and "text" in message:
            self.asgi_texts.append(message["text"])
        await super().send(message)


class Client:
    """A WebSocket client whose server is uvicorn's protocol over a
    ``MemoryTransport``. It reads only when a test asks it to."""

    def __init__(
        self, path: str, headers: list[tuple[str, str]], *, deflate: bool = False
    ) -> None:
        config = Config(
            app=application,
            ws="websockets-sansio",
            lifespan="off",
            log_config=None,
            proxy_headers=False,
            ws_ping_interval=None,
            ws_per_message_deflate=deflate,
        )
        config.load()
        self.server = Server(
            config, ServerState(), app_state={}, _loop=asyncio.get_running_loop()
        )
        self.transport = MemoryTransport(self.server)
        self.server.connection_made(self.transport)
        self.protocol = ClientProtocol(
            parse_uri(f"ws://testserver{path}"),
            extensions=[ClientPerMessageDeflateFactory()] if deflate else None,
        )
        self.request = self.protocol.connect()
        for name, value in headers:
            self.request.headers[name] = value
        self.response: Response | None = None
        self.frames: deque[Frame] = deque()

    async def open(self, timeout: float = 5) -> int:  # noqa: ASYNC109
        """Send the opening handshake; the HTTP status of the answer."""
        self.protocol.send_request(self.request)
        self._answer()
        async with asyncio.timeout(timeout):
            while self.response is None:
                await self._read()
        return self.response.status_code

    def send_json(self, frame: Any) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        self._answer()

    async def receive(self, timeout: float = 5) -> Frame:  # noqa: ASYNC109
        """The next frame from the server, reading from the transport."""
        async with asyncio.timeout(timeout):
            while not self.frames:
                await self._read()
        return self.frames.popleft()

    async def receive_json(self, timeout: float = 5) -> dict:  # noqa: ASYNC109
        frame = await self.receive(timeout)
        assert frame.opcode is Opcode.TEXT, f"expected a text frame, got {frame}"
        return json.loads(frame.data)

    async def receive_close(self, timeout: float = 5) -> Close:  # noqa: ASYNC109
        """Read past data frames to the close frame; its code and reason."""
        while (frame := await self.receive(timeout)).opcode is not Opcode.CLOSE:
            pass
        return Close.parse(frame.data)

    async def _read(self) -> None:
        if self.transport.lost and not self.transport.unread:
            raise ConnectionResetError("the server closed the connection")
        await self.transport.written.wait()
        self.protocol.receive_data(self.transport.take())
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.response = event
            else:
                self.frames.append(event)
        self._answer()  # pongs and the closing handshake, as a client does

    def _answer(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data and not self.transport.lost:
            self.server.data_received(data)

    async def close(self) -> None:
        """Leave: a close frame if the connection is open, then wait for the
        application to finish with it."""
        if not self.transport.lost:
            with contextlib.suppress(Exception):
                self.protocol.send_close(1000)
                self._answer()
            self.transport.abort()
        tasks = list(self.server.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)


@asynccontextmanager
async def fake_transport_client(
    path: str, headers: list[tuple[str, str]] | None = None, *, deflate: bool = False
) -> AsyncIterator[Client]:
    """An open connection to ``path`` over a ``MemoryTransport``; with
    ``deflate``, permessage-deflate offered and accepted."""
    client = Client(path, headers or [], deflate=deflate)
    try:
        status = await client.open()
        assert status == 101, f"handshake refused ({status})"
        yield client
    finally:
        await client.close()
