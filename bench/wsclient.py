"""A lean WebSocket client for the load generator: one ``asyncio.Protocol``.

Why not ``websockets.asyncio.client``: at 50,000 received frames a second
its per-frame cost (a frame-parsing generator, a queue, a task wake-up) takes
a whole core, and on this 2-core machine the generator's CPU is the servers'
loss. This client parses frames straight out of ``data_received``, hands each
text payload to a callback with the arrival time of its TCP read, answers
pings, and masks its own frames with ``websockets``' C ``apply_mask``. It
speaks RFC 6455 as a client must (masked frames, close handshake) and can
offer ``permessage-deflate`` (RFC 7692) as browsers do, to measure what
compression costs a server.

It is a separate tool from the tests' client (``harness.ws.WsClient``), not a
second copy of it: that one speaks the room protocol and keeps every frame
for assertions; this one keeps timings for thousands of sockets at once.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import zlib
from collections.abc import Callable
from typing import Any

from websockets.utils import apply_mask

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
MAX_HANDSHAKE_BYTES = 16 * 1024
DEFLATE_TAIL = b"\x00\x00\xff\xff"
# What Chrome and Firefox offer; a server that accepts compresses every frame.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"

TextHandler = Callable[["WsClient", bytes, float], None]


class HandshakeFailed(Exception):
    """The server did not switch protocols; ``status`` is its HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


def encode_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 §5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + mask + apply_mask(payload, mask)


class WsClient(asyncio.Protocol):
    """One client connection; ``on_text`` sees each text message's bytes.

    ``opened`` resolves when the server answered 101 (or fails with
    ``HandshakeFailed``); ``done`` resolves when the TCP connection is gone.
    ``close_code`` and ``close_reason`` are the server's, if it sent a close.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        on_text: TextHandler | None = None,
        deflate: bool = False,
        rng: random.Random | None = None,
        tag: Any = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.host, self.port, self.path = host, port, path
        self.headers = headers or {}
        self.on_text = on_text
        self.offer_deflate = deflate
        self.rng = rng or random.Random(0)
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.handshaking = True
        self.inflater: Any = None
        self.inflate_reset = False
        self.fragments: list[bytes] = []
        self.fragment_compressed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames_in = 0
        self.tag = tag  # whatever the caller keeps per connection

    # --- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(self.rng.randbytes(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.offer_deflate:
            lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.handshaking and not self._read_handshake():
            return
        # time.monotonic(), not loop.time(): uvloop's clock is cached per
        # loop iteration at millisecond resolution.
        self._read_frames(time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                exc or HandshakeFailed(0, "connection closed during handshake")
            )
        if not self.done.done():
            self.done.set_result(None)

    # --- handshake ----------------------------------------------------------

    def _read_handshake(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HANDSHAKE_BYTES:
                self._fail(HandshakeFailed(0, "oversized handshake response"))
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        parts = head[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            self._fail(HandshakeFailed(status, head[0]))
            return False
        extensions = ""
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                extensions = value.strip().lower()
        if "permessage-deflate" in extensions:
            self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            self.inflate_reset = "server_no_context_takeover" in extensions
        self.handshaking = False
        self.opened.set_result(None)
        return True

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    @property
    def compressed(self) -> bool:
        """Whether the server accepted ``permessage-deflate``."""
        return self.inflater is not None

    # --- frames ---------------------------------------------------------------

    def _read_frames(self, now: float) -> None:
        buf = self.buffer
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            if second & 0x80:  # servers never mask (RFC 6455 §5.1)
                self._protocol_error()
                return
            end = start + length
            if end > size:
                break
            self._frame(first, bytes(buf[start:end]), now)
            pos = end
        if pos:
            del buf[:pos]

    def _frame(self, first: int, payload: bytes, now: float) -> None:
        opcode = first & 0x0F
        if opcode >= OP_CLOSE:
            self._control(opcode, payload)
            return
        if opcode != OP_CONTINUATION:
            self.fragment_compressed = bool(first & 0x40)
        if not first & 0x80:  # not final: keep the fragment
            self.fragments.append(payload)
            return
        if self.fragments:
            self.fragments.append(payload)
            payload = b"".join(self.fragments)
            self.fragments.clear()
        if self.fragment_compressed and self.inflater is not None:
            payload = self.inflater.decompress(payload + DEFLATE_TAIL)
            if self.inflate_reset:
                self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.frames_in += 1
        if self.on_text is not None:
            self.on_text(self, payload, now)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._write(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            if len(payload) >= 2:
                self.close_code = int.from_bytes(payload[:2], "big")
                self.close_reason = payload[2:].decode("utf-8", "replace")
            self._write(OP_CLOSE, payload[:2])
            if self.transport is not None:
                self.transport.close()

    def _protocol_error(self) -> None:
        self.close_code = 1002
        if self.transport is not None:
            self.transport.abort()

    # --- output -----------------------------------------------------------------

    def _write(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frame(opcode, payload, self.rng.randbytes(4)))

    def send_text(self, text: str) -> None:
        """Send one text message (uncompressed, which RFC 7692 allows)."""
        self._write(OP_TEXT, text.encode("utf-8"))

    @property
    def is_open(self) -> bool:
        """Handshake done and the TCP connection not closing."""
        return (
            not self.handshaking
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self, code: int = 1000) -> None:
        """Start the close handshake; the server closes TCP after answering."""
        if self.is_open:
            self._write(OP_CLOSE, code.to_bytes(2, "big"))
        elif self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None:
            self.transport.abort()


async def open_client(seconds: float, **kwargs: Any) -> WsClient:
    """Connect and complete the handshake within ``seconds``."""
    loop = asyncio.get_running_loop()
    client = WsClient(**kwargs)
    try:
        async with asyncio.timeout(seconds):
            await loop.create_connection(lambda: client, client.host, client.port)
            await client.opened
    except BaseException:
        client.abort()
        raise
    return client
