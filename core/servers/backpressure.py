"""The connection under ASGI: the one place that reads server internals.

ASGI gives an application no way to see a slow reader. Daphne's ``send``
never blocks (Twisted buffers without limit) and uvicorn's blocks every
sender behind one full socket. Both are bad for a room: memory grows without
bound, or one client stalls everyone's fan-out. So this module finds the
server's transport behind a connection's ``send`` callable, once, and offers
operations on it: checking the bytes still queued for the client against a
limit, dropping the connection, and writing a WebSocket frame that was
encoded once for every recipient, skipping ASGI's per-recipient work (Daphne,
and uvicorn's default websockets-sansio implementation). Everything else in the
app stays plain ASGI; on an unknown server these are unavailable and
nothing is guarded (documented in docs/performance.md).

Writing frames directly works only on the versions verified in
``core.servers``; on others every frame goes through ASGI, while the
buffer's size is still read (a read cannot corrupt a stream, and without it
a client that stops reading could fill the process's memory). Upstream: ASGI
has no way to ask for a connection's unsent bytes or to send one encoded
frame to many connections; no issue yet (to file at django/asgiref: "a
websocket extension reporting the send buffer's size").
"""

import functools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.servers import verified

if TYPE_CHECKING:
    from socket import socket as Socket
    from typing import Protocol

    class _TwistedTransport(Protocol):
        """What ``_twisted`` reads and calls of a Twisted TCP transport
        (twisted.internet.abstract.FileDescriptor and tcp.Connection)."""

        dataBuffer: bytes
        offset: int
        _tempDataLen: int
        TLS: bool
        disconnecting: bool
        socket: Socket

        def write(self, data: bytes) -> None: ...

        def abortConnection(self) -> None: ...


logger = logging.getLogger(__name__)


# The adapter's name in the line logged when it is off (core.servers).
DIRECT_WRITES = "Writing frames directly (core.servers.backpressure)"

# What became of a frame offered to a connection (``WriteBuffer.offer``).
# Plain constants, not an Enum: this runs once per recipient of every
# message, and an Enum member lookup costs ~100 ns on Python 3.11.
Offer = str
WRITTEN: Offer = "written"
# Past the limit: the client has stopped reading; the caller drops it.
TOO_FULL: Offer = "too full"
# Not written: the caller sends it through ASGI.
DECLINED: Offer = "declined"


@dataclass(frozen=True)
class WriteBuffer:
    """A connection's outgoing buffer, as the server keeps it."""

    # Checks the buffer against the limit (past it, the client counts as one
    # that stopped reading) and, if the client still reads, writes a whole,
    # unmasked text frame where the server allows it. One call, as this runs
    # once per recipient of every message.
    offer: Callable[[bytes], Offer]
    drop: Callable[[], None]
    # Bytes written but not yet taken by the client's socket.
    queued: Callable[[], int]


def _declining(
    queued_bytes: Callable[[], int], limit_bytes: int
) -> Callable[[bytes], Offer]:
    """``offer`` where frames go through ASGI only: it checks the limit."""

    def offer(frame: bytes) -> Offer:
        return TOO_FULL if queued_bytes() > limit_bytes else DECLINED

    return offer


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
    transport: _TwistedTransport = protocol.transport
    open_state = protocol.STATE_OPEN

    def queued_bytes() -> int:
        # twisted.internet.abstract.FileDescriptor's write buffers.
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    queued_bytes()  # an unfamiliar Twisted fails here, in locate(): unguarded
    if not verified(DIRECT_WRITES, "daphne", "autobahn", "twisted"):
        return WriteBuffer(
            _declining(queued_bytes, limit_bytes),
            transport.abortConnection,
            queued_bytes,
        )

    def offer(frame: bytes) -> Offer:
        queued = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        if queued > limit_bytes:
            return TOO_FULL
        # What autobahn's sendMessage would write, minus its per-call work;
        # only while nothing of autobahn's own is queued or negotiated.
        if (
            protocol.state != open_state
            or protocol.send_queue
            or protocol._perMessageCompress is not None
        ):
            return DECLINED
        if queued or transport.TLS or transport.disconnecting:
            transport.write(frame)  # behind what is queued, in order
            return WRITTEN
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
        return WRITTEN

    return WriteBuffer(offer, transport.abortConnection, queued_bytes)


def _asyncio(owner: Any, transport: Any, limit_bytes: int) -> WriteBuffer:
    # Pause (which blocks uvicorn's send for every sender in the process)
    # only past the limit, by which time the client has been dropped.
    transport.set_write_buffer_limits(high=limit_bytes * 2)
    queued_bytes = transport.get_write_buffer_size
    offer = _sansio_offer(owner, queued_bytes, limit_bytes) or _declining(
        queued_bytes, limit_bytes
    )
    return WriteBuffer(offer, transport.abort, queued_bytes)


def _sansio_offer(
    owner: Any, queued_bytes: Callable[[], int], limit_bytes: int
) -> Callable[[bytes], Offer] | None:
    """uvicorn's websockets-sansio protocol: what its ``send`` would write
    for a text message (``conn.send_text``, then ``transport.write``), minus
    the per-call framing, when nothing is negotiated and the socket is open.
    """
    conn = getattr(owner, "conn", None)
    if not verified(DIRECT_WRITES, "uvicorn", "websockets"):
        return None
    if (
        conn is None
        or not hasattr(conn, "extensions")
        or not hasattr(owner, "close_sent")
    ):
        return None  # wsproto or an unfamiliar implementation: ASGI only
    # Imported here: websockets comes with uvicorn[standard], not with Daphne.
    from websockets.protocol import State

    open_state = State.OPEN
    write = owner.transport.write
    writable = owner.writable

    def offer(frame: bytes) -> Offer:
        if queued_bytes() > limit_bytes:
            return TOO_FULL
        if (
            owner.disconnected
            or owner.close_sent
            or not owner.handshake_complete
            or not writable.is_set()
            or conn.state is not open_state
            or conn.extensions
        ):
            return DECLINED
        write(frame)
        return WRITTEN

    return offer


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


def locate_stream(send: Any, limit_bytes: int) -> WriteBuffer | None:
    """The write buffer behind an HTTP response's ``send`` (a Server-Sent
    Events stream), or None on unknown servers.

    Its ``offer`` never writes: a WebSocket frame must never reach an HTTP
    response, so the stream sends its own bytes through ASGI. Only the
    queued bytes are read, so that a reader that stops is closed, not
    buffered for ever.
    """
    send = _unwrap(send)
    try:
        if isinstance(send, functools.partial) and send.args:
            # Daphne: partial(Server.handle_reply, WebRequest); the request's
            # transport is its channel's TCP transport.
            transport: _TwistedTransport = send.args[0].transport
            if hasattr(transport, "abortConnection"):

                def twisted_queued() -> int:
                    return (
                        len(transport.dataBuffer)
                        - transport.offset
                        + transport._tempDataLen
                    )

                twisted_queued()  # an unfamiliar Twisted fails here: unguarded
                return WriteBuffer(
                    _declining(twisted_queued, limit_bytes),
                    transport.abortConnection,
                    twisted_queued,
                )
        owner = getattr(send, "__self__", None)
        transport_ = getattr(owner, "transport", None)
        if transport_ is not None and hasattr(transport_, "get_write_buffer_size"):
            queued = transport_.get_write_buffer_size  # uvicorn
            return WriteBuffer(
                _declining(queued, limit_bytes), transport_.abort, queued
            )
    except Exception:  # an unfamiliar server version: run unguarded
        logger.warning("cannot see write buffers of this server", exc_info=True)
    return None
