"""The connection under ASGI: the one place that reads server internals.

ASGI gives an application no way to see a slow reader. Daphne's ``send``
never blocks (Twisted buffers without limit) and uvicorn's blocks every
sender behind one full socket. Both are bad for a room: memory grows without
bound, or one client stalls everyone's fan-out. So this module finds the
server's transport behind a connection's ``send`` callable, once, and offers
operations on it: the bytes still queued for the client, dropping the
connection, and writing a WebSocket frame that was encoded once for every
recipient, skipping ASGI's per-recipient work (Daphne, and uvicorn's default
websockets-sansio implementation). Everything else in the
app stays plain ASGI; on an unknown server these are unavailable and
nothing is guarded (documented in docs/performance.md).
"""

import functools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteBuffer:
    """A connection's outgoing buffer, as the server keeps it."""

    queued_bytes: Callable[[], int]
    drop: Callable[[], None]
    # Past this many queued bytes the client counts as one that stopped reading.
    limit_bytes: int
    # Writes a whole, unmasked text frame; False when the connection cannot
    # take one right now (the caller then sends through ASGI).
    write_frame: Callable[[bytes], bool] | None = None

    def too_full(self) -> bool:
        """True once the client has stopped reading (see ``limit_bytes``)."""
        return self.queued_bytes() > self.limit_bytes


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented, uncompressed WebSocket text frame (RFC 6455)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


def _unwrap(send: Any) -> Any:
    # Channels' session middleware wraps send; its original is real_send.
    while hasattr(getattr(send, "__self__", None), "real_send"):
        send = send.__self__.real_send
    return send


def _twisted(protocol: Any, limit_bytes: int) -> WriteBuffer:
    transport = protocol.transport
    open_state = protocol.STATE_OPEN

    def queued_bytes() -> int:
        # twisted.internet.abstract.FileDescriptor's write buffers.
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    def write_frame(frame: bytes) -> bool:
        # What autobahn's sendMessage would write, minus its per-call work;
        # only while nothing of autobahn's own is queued or negotiated.
        if (
            protocol.state != open_state
            or protocol.send_queue
            or protocol._perMessageCompress is not None
        ):
            return False
        if transport.TLS or transport.disconnecting or queued_bytes():
            transport.write(frame)  # behind what is queued, in order
            return True
        # Nothing queued: send now. Twisted's write would register the socket
        # for writing and unregister it after (two epoll_ctl calls a write),
        # the largest cost of fan-out on Daphne. Leftovers go to Twisted.
        try:
            sent = transport.socket.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # Twisted's own write will notice and close
        if sent < len(frame):
            transport.write(frame[sent:])
        return True

    return WriteBuffer(
        queued_bytes, transport.abortConnection, limit_bytes, write_frame
    )


def _asyncio(owner: Any, transport: Any, limit_bytes: int) -> WriteBuffer:
    # Pause (which blocks uvicorn's send for every sender in the process)
    # only past the limit, by which time the client has been dropped.
    transport.set_write_buffer_limits(high=limit_bytes * 2)
    return WriteBuffer(
        transport.get_write_buffer_size,
        transport.abort,
        limit_bytes,
        _sansio_writer(owner),
    )


def _sansio_writer(owner: Any) -> Callable[[bytes], bool] | None:
    """uvicorn's websockets-sansio protocol: what its ``send`` would write
    for a text message (``conn.send_text``, then ``transport.write``), minus
    the per-call framing, when nothing is negotiated and the socket is open.
    """
    conn = getattr(owner, "conn", None)
    if (
        conn is None
        or not hasattr(conn, "extensions")
        or not hasattr(owner, "close_sent")
    ):
        return None  # wsproto or an unfamiliar implementation: ASGI only
    # Imported here: websockets comes with uvicorn[standard], not with Daphne.
    from websockets.protocol import State

    def write_frame(frame: bytes) -> bool:
        if (
            owner.disconnected
            or owner.close_sent
            or not owner.handshake_complete
            or not owner.writable.is_set()
            or conn.state is not State.OPEN
            or conn.extensions
        ):
            return False
        owner.transport.write(frame)
        return True

    return write_frame


def locate(send: Any, limit_bytes: int) -> WriteBuffer | None:
    """The write buffer behind an ASGI ``send``, or None on unknown servers."""
    send = _unwrap(send)
    try:
        if isinstance(send, functools.partial) and send.args:
            # Daphne: partial(Server.handle_reply, protocol)
            protocol = send.args[0]
            if hasattr(protocol.transport, "abortConnection"):
                return _twisted(protocol, limit_bytes)
        owner = getattr(send, "__self__", None)
        transport = getattr(owner, "transport", None)
        if transport is not None and hasattr(transport, "get_write_buffer_size"):
            return _asyncio(owner, transport, limit_bytes)  # uvicorn
    except Exception:  # an unfamiliar server version: run unguarded
        logger.warning("cannot see write buffers of this server", exc_info=True)
    return None
