"""The access log, written by the application rather than the server.

One line per HTTP request, when it ends, and per WebSocket connection one
when it is accepted and one when it ends (or one for a handshake refused),
all on the ``core.accesslog`` logger. ``AccessLogRouter``, the outermost
layer, also opens the request's or connection's log scope
(``core.logcontext``), so every line logged for it carries the same id, the
client's address and, once known, the user and the room.

The address is ``core.clientaddr``'s: behind App Platform the header the
platform sets, elsewhere the socket's peer. Daphne's own access log can show
only the peer, which behind App Platform is the platform's proxy, in a format
of its own on stdout; ``quiet_daphne`` switches it off, so that these lines
replace it (the same events, the same ``WSCONNECT`` words). Query strings are
left out: a client may put anything there.
"""

import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.routing import ProtocolTypeRouter

from core import clientaddr, logcontext

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _access_line(
    scope: logcontext.Scope, event: str, request: str, outcome: object, **fields: Any
) -> None:
    """One access line, logged for ``scope`` from whichever task ends it.

    The message repeats the fields for plain text, e.g.
    ``203.0.113.7 "GET /api/rooms/" 200 3.1ms``.
    """
    with logcontext.use(scope):
        logger.info(
            '%s "%s" %s %.1fms',
            scope.get("client", clientaddr.UNKNOWN),
            request,
            "-" if outcome is None else outcome,
            fields["duration_ms"],
            extra={"event": event, **fields},
        )


class _Response:
    """An HTTP request's ``send``: its status and size, and its id told."""

    __slots__ = ("bytes", "real_send", "request_id", "status")

    def __init__(self, real_send: Send, request_id: str) -> None:
        self.real_send = real_send
        self.request_id = request_id.encode("ascii")
        self.status: int | None = None
        self.bytes = 0

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            told = (REQUEST_ID_HEADER, self.request_id)
            message = {**message, "headers": [*message.get("headers", ()), told]}
        elif message["type"] == "http.response.body":
            self.bytes += len(message.get("body", b""))
        await self.real_send(message)


class _Socket:
    """A WebSocket's ``send``: when it was accepted, and whether the server
    closed it. Shaped like Channels' session wrapper (``real_send``), so
    core.servers.backpressure still finds the server's socket behind it.

    Kept small, as it lives as long as the connection: ``receive`` is not
    wrapped (one coroutine frame less for every open socket); the consumer
    notes the client's close code in the log scope instead.
    """

    __slots__ = (
        "accepted_at",
        "log_scope",
        "path",
        "real_send",
        "server_code",
        "started",
    )

    def __init__(self, send: Send, path: str, log_scope: logcontext.Scope) -> None:
        self.real_send = send
        self.path = path
        self.log_scope = log_scope
        self.started = time.perf_counter()
        self.accepted_at: float | None = None
        self.server_code: int | None = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept" and self.accepted_at is None:
            self.accepted_at = time.perf_counter()
            self._line("ws.connect", "WSCONNECT", None, _ms_since(self.started))
        elif kind == "websocket.close" and self.server_code is None:
            self.server_code = message.get("code", 1000)
        await self.real_send(message)

    def ended(self) -> None:
        """Log how the connection ended, or that it was never accepted."""
        if self.accepted_at is None:
            duration_ms = _ms_since(self.started)
            self._line("ws.reject", "WSREJECT", 403, duration_ms, status=403)
            return
        # Who closed first says why: the server's code (4008, 4012, 4403...)
        # over the client's answer to it.
        code: object = self.server_code
        if code is None:
            code = self.log_scope.get("close_code")
        duration_ms = _ms_since(self.accepted_at)
        self._line("ws.disconnect", "WSDISCONNECT", code, duration_ms, close_code=code)

    def _line(
        self, event: str, word: str, outcome: object, duration_ms: float, **fields: Any
    ) -> None:
        _access_line(
            self.log_scope,
            event,
            f"{word} {self.path}",
            outcome,
            path=self.path,
            duration_ms=duration_ms,
            **fields,
        )


class AccessLogRouter(ProtocolTypeRouter):
    """Channels' ``ProtocolTypeRouter``, outermost, that also opens each
    request's and connection's log scope and writes its access lines; an
    HTTP response names its request's id in ``X-Request-ID``, for a user
    reporting a problem to quote.

    One class for both jobs because every open socket keeps the frame of
    each layer it passed through: a middleware in front of the router would
    cost each idle connection a frame more (docs/performance.md, "Memory per
    connection").
    """

    # Scopes and events are plain dicts here, as Channels passes them; its
    # stubs type them as asgiref's TypedDicts, which these paths would have
    # to narrow key by key for nothing.
    async def __call__(  # type: ignore[override]
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        kind = scope["type"]
        app: Any = self.application_mapping.get(kind)
        if app is None or kind not in ("http", "websocket"):
            # Lifespan, or refused.
            await super().__call__(scope, receive, send)  # type: ignore[arg-type]
            return
        if kind == "http":
            await self._http(app, scope, receive, send)
            return
        token = logcontext.open_scope(
            connection_id=uuid.uuid4().hex,
            client=clientaddr.from_scope(scope, exact=True),
        )
        socket = _Socket(send, scope["path"], logcontext.current() or {})
        try:
            await app(scope, receive, socket.send)
        finally:
            socket.ended()
            logcontext.close_scope(token)

    async def _http(self, app: Any, scope: Scope, receive: Receive, send: Send) -> None:
        # App Platform documents no request id header, so each request gets
        # one here.
        request_id = uuid.uuid4().hex
        token = logcontext.open_scope(
            request_id=request_id, client=clientaddr.from_scope(scope, exact=True)
        )
        log_scope = logcontext.current() or {}
        response = _Response(send, request_id)
        started = time.perf_counter()
        try:
            await app(scope, receive, response.send)
        finally:
            method, path = scope.get("method", "-"), scope["path"]
            _access_line(
                log_scope,
                "http.request",
                f"{method} {path}",
                response.status,
                method=method,
                path=path,
                status=response.status,
                bytes=response.bytes,
                duration_ms=_ms_since(started),
            )
            logcontext.close_scope(token)


def _no_access_log(stream: object) -> None:
    """Daphne's command line builds its access logger with this: none."""
    return None


def quiet_daphne() -> None:
    """Switch Daphne's own access log off; ``AccessLogRouter`` writes it.

    Daphne's command line imports the application before it builds the
    server and its access logger, so replacing the class it builds that
    from is enough (an ``--access-log`` file stays empty too). Never
    imports Daphne: that would install a Twisted reactor.
    """
    cli = sys.modules.get("daphne.cli")
    if cli is not None and hasattr(cli, "AccessLogGenerator"):
        # Daphne ships no types; hasattr said the attribute is there.
        cli.AccessLogGenerator = _no_access_log  # type: ignore[attr-defined]
