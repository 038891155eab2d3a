"""Work-arounds for Daphne and autobahn, applied only when Daphne serves us,
and only on the versions they were verified against (``core.servers``).

1. Shutdown. On SIGTERM Daphne cancels every application in
   ``Server.kill_all_applications``. It reads ``details["application_instance"]``
   for every connection, but an HTTP connection that has not started its
   application yet (an idle keep-alive, or a WebSocket upgraded within the
   last second) has none: the ``KeyError`` aborts the loop, no consumer is
   cancelled, and every client sees 1006 instead of 4012 (see
   tests/integration/test_failover.py). And it waits for the cancelled
   applications with a ``gather`` that ends at the first one done, so the
   process may exit before the others have closed their sockets with 4012.
   ``kill_all_applications`` is replaced by the same code using ``.get()``
   and ``return_exceptions=True``. Upstream: no issue yet (to file at
   django/daphne: "kill_all_applications raises KeyError for a connection
   without an application_instance, and its gather ends at the first
   cancelled application").

2. Memory and CPU per WebSocket. An open WebSocket keeps, for as long as it lives,
   the HTTP request it was upgraded from (Twisted's channel stays registered
   as the transport's producer), autobahn's copies of the opening handshake,
   and its own copy of the factory's 29 protocol options. Once the socket is
   open none of it is read again; letting go of it took an idle connection
   from 35.9 to 29.4 KiB (docs/performance.md, "Memory per connection").
   Then the 41 attributes that stay at their first value until a ping or
   the close (QUIET_DEFAULTS), and autobahn's send queue, which Daphne never
   fills: the class carries them until a socket sets its own.
   And autobahn pretty-prints its options for a debug log line on every
   connection, whether or not it is logged; that waits until it is.
   Upstream: no issue yet (to file at django/daphne: "an open WebSocket
   keeps its HTTPChannel, request and autobahn's handshake copies"; and at
   crossbario/autobahn-python: "options copied per protocol instance, and
   pformat'ed for a debug line that is not logged").

3. Close reasons. Daphne passes a ``websocket.close`` message's code to the
   client but drops its ``reason`` (ASGI spec 2.3), and Switchboard's
   reasons carry retry hints: ``retry_after_ms`` on 4429 and 4503,
   ``retry_window_ms`` on 4012 (docs/protocol.md, section 8). A close with a
   reason is sent by autobahn itself, with the reason. Upstream:
   https://github.com/django/daphne/issues/374 and
   https://github.com/crossbario/autobahn-python/issues/1642.

4. Closed WebSockets left for the cyclic collector. autobahn fires the
   protocol's ``is_closed`` Deferred with the protocol itself as its result,
   a reference cycle that keeps every closed connection (its transport,
   consumer, queues: some 75 objects) until a full collection, which then
   has to walk them all: 1.2-1.4 s for the 10,000 connections of the bench's
   idle scenario, falling on whatever came next (docs/performance.md,
   "Garbage-collector pauses"). Nothing reads that result (Daphne does not
   use ``is_closed``); once the socket has closed it is let go, and the
   connection is freed as it closes. Upstream: no issue yet (to file at
   crossbario/autobahn-python: "is_closed fires with the protocol as its
   result: a cycle per closed connection").

5. The close grace. autobahn drops a connection whose client has not
   answered the server's close frame within ``closeHandshakeTimeout`` (1 s,
   which Daphne leaves as it is), counted from when the frame was queued,
   not sent. A 4008 close waits behind up to a budget of unread output, so
   a client reading on was cut off (1006) a second later, short of the
   5 s the protocol promises (docs/protocol.md, section 9.5). Daphne's
   factory gets ``CLOSE_GRACE_SECONDS`` instead. Upstream: no issue yet (to
   file at django/daphne: "let the application set closeHandshakeTimeout";
   autobahn counts from queueing by design).

6. A queue per connection. Daphne gives every application an
   ``asyncio.Queue`` for its events: four deques, about 3 KiB, for as long
   as the connection lives, though it seldom holds more than one event.
   ``ApplicationQueue`` does what Daphne and an application use of it
   (``put_nowait``, ``get``) in a list that is emptied as it is read.
   Upstream: no issue yet (to file at django/daphne: "an asyncio.Queue per
   connection costs 3 KiB of an idle WebSocket").

Remove each once Daphne (or autobahn) ships the fix; each is checked
against a real Daphne in tests/integration/test_daphne_fix.py (the close
reasons in tests/integration/test_storm.py).
"""

import asyncio
import contextlib
import logging
import pprint
import sys
from collections import deque
from functools import partial
from typing import Any

from core.servers import verified

logger = logging.getLogger(__name__)
_MARK = "_switchboard_fixed"


def _client_gone() -> tuple[type[BaseException], ...]:
    # uvicorn raises ClientDisconnected (an OSError) for a send after the
    # client left; Daphne lets autobahn's Disconnected through. Importing
    # autobahn.exception installs no reactor.
    try:
        from autobahn.exception import Disconnected
    except ImportError:  # Daphne is not installed: uvicorn only
        return (OSError,)
    return (OSError, Disconnected)


# What a server raises for a frame sent to a client that has gone.
CLIENT_GONE = _client_gone()

# How long a client has, after the server queued its close frame, to read up
# to it and answer before it is cut off (docs/protocol.md, 4008).
CLOSE_GRACE_SECONDS = 5.0

# autobahn's copies of the opening handshake, read only while it is processed
# (processHandshake, succeedHandshake).
HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_params",
    "http_request_host",
    "http_request_path",
    "_wskey",
    "websocket_extensions",
    "websocket_protocols",
)

# autobahn's per-connection state that is at these values once a socket is
# open and stays there until a ping, an error or the closing handshake. The
# protocol class (_protocol_with_options) carries them, and an open socket
# drops its own copies of those still at them: 70 attributes made a
# 1.5 KiB instance dictionary, the 29 left make a 0.8 KiB one.
QUIET_DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(HANDSHAKE_LEFTOVERS, None),
    **dict.fromkeys(
        (
            "_perMessageCompress",
            "autoPingPending",
            "autoPingPendingCall",
            "autoPingPendingSent",
            "autoPingTimeoutCall",
            "closeHandshakeTimeoutCall",
            "current_frame",
            "localCloseCode",
            "localCloseReason",
            "openHandshakeTimeoutCall",
            "protocol_to_accept",
            "remoteCloseCode",
            "remoteCloseReason",
            "trackedTimings",
            "wasNotCleanReason",
            "websocket_protocol_in_use",
        ),
        None,
    ),
    **dict.fromkeys(
        (
            "closedByMe",
            "droppedByMe",
            "failedByMe",
            "inside_message",
            "triggered",
            "wasClean",
            "wasCloseHandshakeTimeout",
            "wasMaxFramePayloadSizeExceeded",
            "wasMaxMessagePayloadSizeExceeded",
            "wasOpenHandshakeTimeout",
            "wasServerConnectionDropTimeout",
            "wasServingFlashSocketPolicyFile",
        ),
        False,
    ),
    "autoPingPendingSeq": 0,
    "send_state": 0,  # SEND_STATE_GROUND
}
_MISSING = object()


def apply() -> None:
    """Patch Daphne if it is what is serving us."""
    # Never import Daphne here: importing it installs a Twisted reactor.
    server = sys.modules.get("daphne.server")
    ws = sys.modules.get("daphne.ws_protocol")
    if (server is None and ws is None) or not verified(
        "Daphne's patches (core.servers.daphne)", "daphne", "autobahn", "twisted"
    ):
        return
    if server and not getattr(server.Server.kill_all_applications, _MARK, False):
        _fix_shutdown(server)
    if server and not getattr(server.Server.create_application, _MARK, False):
        _lean_queues(server)
    if ws and not getattr(ws.WebSocketProtocol.onOpen, _MARK, False):
        _slim_websockets(ws)
    if ws and not getattr(ws.WebSocketProtocol.handle_reply, _MARK, False):
        _close_with_reason(ws)
    if ws and not getattr(ws.WebSocketProtocol.onClose, _MARK, False):
        _free_when_closed(ws)
    if ws and not getattr(ws.WebSocketFactory.__init__, _MARK, False):
        _close_grace(ws)


def _close_grace(module: Any) -> None:
    init = module.WebSocketFactory.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.setProtocolOptions(closeHandshakeTimeout=CLOSE_GRACE_SECONDS)

    setattr(__init__, _MARK, True)
    module.WebSocketFactory.__init__ = __init__


def _free_when_closed(module: Any) -> None:
    on_close = module.WebSocketProtocol.onClose

    def onClose(self: Any, wasClean: bool, code: Any, reason: Any) -> None:
        try:
            on_close(self, wasClean, code, reason)
        finally:
            closed = self.__dict__.get("is_closed")
            if getattr(closed, "called", False) and closed.result is self:
                closed.result = None  # the cycle: protocol -> Deferred -> protocol

    setattr(onClose, _MARK, True)
    module.WebSocketProtocol.onClose = onClose


def _close_with_reason(module: Any) -> None:
    handle_reply = module.WebSocketProtocol.handle_reply

    def handle_reply_with_reason(self: Any, message: dict[str, Any]) -> None:
        reason = message.get("reason")
        if (
            reason
            and message.get("type") == "websocket.close"
            and self.state != self.STATE_CONNECTING  # a refusal is an HTTP 403
        ):
            code = message.get("code")
            self.sendClose(code=1000 if code is None else code, reason=reason)
            return
        handle_reply(self, message)

    setattr(handle_reply_with_reason, _MARK, True)
    module.WebSocketProtocol.handle_reply = handle_reply_with_reason


def _fix_shutdown(module: Any) -> None:
    def kill_all_applications(self: Any) -> Any:
        wait_for = []
        for details in self.connections.values():
            instance = details.get("application_instance")
            if instance is not None and not instance.done():
                instance.cancel()
                wait_for.append(instance)
        module.logger.info("Killed %i pending application instances", len(wait_for))
        # return_exceptions: Daphne's gather ends at the first application
        # that finishes cancelled, and the reactor stops before the others
        # have written their close frames (their clients see 1006).
        everyone = asyncio.gather(*wait_for, return_exceptions=True)
        waiting = module.defer.Deferred.fromFuture(everyone)
        waiting.addErrback(lambda failure: None)
        return waiting

    setattr(kill_all_applications, _MARK, True)
    module.Server.kill_all_applications = kill_all_applications


class ApplicationQueue:
    """An application's events, first in first out: ``asyncio.Queue``'s
    ``put_nowait``, ``get_nowait`` and ``get`` (unbounded; a cancelled
    ``get`` loses nothing), held in a list that is emptied as it is read."""

    __slots__ = ("_getters", "_head", "_items")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._head = 0  # items before it have been read
        self._getters: list[asyncio.Future[None]] = []

    def qsize(self) -> int:
        return len(self._items) - self._head

    def empty(self) -> bool:
        return self._head == len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake_next()

    def get_nowait(self) -> Any:
        if self.empty():
            raise asyncio.QueueEmpty
        items = self._items
        item = items[self._head]
        self._head += 1
        if self._head == len(items):
            items.clear()  # frees the list's storage too
            self._head = 0
        else:
            items[self._head - 1] = None
        return item

    async def get(self) -> Any:
        while self.empty():
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                # Woken, then cancelled: the item goes to the next reader.
                if not self.empty() and not getter.cancelled():
                    self._wake_next()
                raise
        return self.get_nowait()

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


def _lean_queues(module: Any) -> None:
    def create_application(self: Any, protocol: Any, scope: Any) -> Any:
        # Daphne 4.2's own, with an ApplicationQueue for its asyncio.Queue.
        if "application_instance" in self.connections[protocol]:
            raise RuntimeError("this connection has an application already")
        input_queue = ApplicationQueue()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope,
            receive=input_queue.get,
            send=partial(self.handle_reply, protocol),
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            application_instance,
            loop=asyncio.get_event_loop(),
        )
        return input_queue

    setattr(create_application, _MARK, True)
    module.Server.create_application = create_application


def _slim_websockets(module: Any) -> None:
    build_protocol = module.WebSocketFactory.buildProtocol
    on_open = module.WebSocketProtocol.onOpen

    def buildProtocol(self: Any, addr: Any) -> Any:
        # autobahn copies each option into the protocol unless the protocol
        # already has it, so a subclass that carries this factory's options
        # as class attributes spares 29 instance attributes (1.7 KiB).
        try:
            names = module.WebSocketProtocol.CONFIG_ATTRS
            options = tuple(getattr(self, name) for name in names)
            if self.__dict__.get("_switchboard_options") != options:
                base = module.WebSocketProtocol
                self.protocol = _protocol_with_options(base, options)
                self._switchboard_options = options
        except Exception:  # an unfamiliar autobahn: its own per-instance copies
            logger.warning("cannot share WebSocket options", exc_info=True)
            self.protocol = module.WebSocketProtocol
        return build_protocol(self, addr)

    def onOpen(self: Any) -> None:
        on_open(self)
        try:
            release_upgrade(self)
        except Exception:  # an unfamiliar Daphne, autobahn or Twisted: keep serving
            logger.warning("cannot release a WebSocket's upgrade", exc_info=True)

    setattr(onOpen, _MARK, True)
    module.WebSocketFactory.buildProtocol = buildProtocol
    module.WebSocketProtocol.onOpen = onOpen
    _lazy_option_dump(sys.modules.get("autobahn.websocket.protocol"))


class _LazyPformat:
    """``pprint.pformat(obj)``, computed only if a log line is written."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __str__(self) -> str:
        return pprint.pformat(self.obj)

    __repr__ = __str__


def _lazy_option_dump(autobahn: Any) -> None:
    # autobahn pretty-prints its 29 options for a debug line on every new
    # connection, logged or not: 3 % of a handshake's CPU, paid in a storm.
    if autobahn is None or getattr(autobahn, "pformat", None) is not pprint.pformat:
        return
    timings = getattr(autobahn, "Timings", None)
    if timings is not None:  # its __str__ must return a str
        timings.__str__ = lambda self: pprint.pformat(self._timings)
    autobahn.pformat = _LazyPformat


def _protocol_with_options(base: type[Any], options: tuple[Any, ...]) -> type:
    send_data = base.sendData

    def sendData(
        self: Any, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        # autobahn queues only writes asked to be synchronous or chopped up
        # (Daphne asks for neither); until one is, the class's empty tuple
        # stands for the deque each socket would keep (0.7 KiB).
        if (sync or chopsize) and "send_queue" not in self.__dict__:
            self.send_queue = deque()
        send_data(self, data, sync, chopsize)

    attributes = {
        "sendData": sendData,
        "send_queue": (),
        **QUIET_DEFAULTS,
        # staticmethod: a function option (perMessageCompressionAccept) would
        # otherwise become a method of the protocol.
        **{
            name: staticmethod(value) if callable(value) else value
            for name, value in zip(base.CONFIG_ATTRS, options, strict=True)
        },
    }
    return type(base.__name__, (base,), attributes)


def release_upgrade(protocol: Any) -> None:
    """Drop what an open WebSocket still holds of its HTTP upgrade."""
    from twisted.web.http import HTTPChannel

    # HTTPChannel registered itself as the transport's producer; Daphne hands
    # the transport to the WebSocket without unregistering it, so the channel
    # and its request (headers, addresses, buffers) live as long as the
    # socket. Its pause/resume do nothing by now; autobahn unregisters it
    # anyway when the connection drops.
    transport = protocol.transport
    producer = getattr(transport, "producer", None)
    channel = getattr(producer, "_producer", producer)  # under TLS, a membrane
    if isinstance(channel, HTTPChannel):
        transport.unregisterProducer()
        channel.requests = []  # the channel and request then go without the GC

    state = protocol.__dict__
    for name in HANDSHAKE_LEFTOVERS:
        if name in state:
            state[name] = None
    request = state.get("request")  # Daphne reads only request.path from here on
    if request is not None:
        request.headers = None
        request.params = None

    # What the class carries need not be the socket's own (QUIET_DEFAULTS);
    # a dictionary does not shrink as keys go, a copy of it is sized to fit.
    cls = type(protocol)
    quiet = [
        name
        for name, value in state.items()
        if name in QUIET_DEFAULTS and getattr(cls, name, _MISSING) is value
    ]
    if not state.get("send_queue", True) and getattr(cls, "send_queue", None) == ():
        quiet.append("send_queue")  # empty: the class's tuple reads the same
    if quiet:
        for name in quiet:
            del state[name]
        protocol.__dict__ = dict(state)
