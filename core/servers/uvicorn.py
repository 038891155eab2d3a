"""uvicorn's shutdown close names the window to reconnect within.

On SIGTERM uvicorn closes every open WebSocket itself with 1012, before the
application hears of it, and with no reason: clients would fall back to a
fixed window, which a large instance's crowd overruns (the storm scenario
of docs/performance.md: 2,122 refusals and 10.3 s to resume 2,000 clients,
against none and 8.6 s with the window). The 1012 now carries the same
``retry_window_ms`` reason as Daphne's 4012 (docs/protocol.md, section 8).

Applied to uvicorn's default WebSocket implementation (websockets-sansio)
only when uvicorn is serving us, and only on the versions it was verified
against (``core.servers``); checked against a real uvicorn in
tests/integration/test_failover.py. Upstream: uvicorn sends 1012 on shutdown
since https://github.com/Kludex/uvicorn/pull/1816, with no reason and no
way for the application to give one; no issue yet (to file at
Kludex/uvicorn: "let the application name the shutdown close's reason").
"""

import importlib
import sys
from collections.abc import Callable
from typing import Any

from core.servers import verified

_MARK = "_switchboard_fixed"
SHUTDOWN_CODE = 1012


def apply(shutdown_reason: Callable[[], str]) -> None:
    """Patch uvicorn's WebSocket protocol if uvicorn is what serves us; its
    1012 close then carries ``shutdown_reason()``."""
    # uvicorn loads the application before its protocol classes; its
    # command line is imported by then. Under Daphne, nothing is imported.
    if "uvicorn.main" not in sys.modules or not verified(
        "uvicorn's shutdown reason (core.servers.uvicorn)", "uvicorn", "websockets"
    ):
        return
    module = importlib.import_module(
        "uvicorn.protocols.websockets.websockets_sansio_impl"
    )
    protocol = module.WebSocketsSansIOProtocol
    if not getattr(protocol.shutdown, _MARK, False):
        _close_with_window(protocol, shutdown_reason)


def _close_with_window(protocol: Any, shutdown_reason: Callable[[], str]) -> None:
    shutdown = protocol.shutdown

    def shutdown_with_window(self: Any) -> None:
        # uvicorn's own shutdown, whose 1012 close now has a reason.
        send_close = self.conn.send_close

        def send_close_with_window(code: int | None = None, reason: str = "") -> None:
            if code == SHUTDOWN_CODE and not reason:
                reason = shutdown_reason()
            send_close(code, reason)

        self.conn.send_close = send_close_with_window
        try:
            shutdown(self)
        finally:
            del self.conn.send_close

    setattr(shutdown_with_window, _MARK, True)
    protocol.shutdown = shutdown_with_window
