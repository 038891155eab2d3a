"""uvicorn's shutdown close names the window to reconnect within.

On SIGTERM uvicorn closes every open WebSocket itself with 1012, before the
application hears of it, and with no reason: clients would fall back to a
fixed window, which a large instance's crowd overruns (the storm scenario
of docs/performance.md: 2,122 refusals and 10.3 s to resume 2,000 clients,
against none and 8.6 s with the window). The 1012 now carries the same
``retry_window_ms`` reason as Daphne's 4012 (docs/protocol.md, section 8).

Applied to uvicorn's default WebSocket implementation (websockets-sansio)
only when uvicorn is serving us; checked against a real uvicorn in
tests/integration/test_failover.py.
"""

import importlib
import sys
from typing import Any

from core.consumers import shutdown_reason

_MARK = "_switchboard_fixed"
SHUTDOWN_CODE = 1012


def apply() -> None:
    """Patch uvicorn's WebSocket protocol if uvicorn is what serves us."""
    # uvicorn loads the application before its protocol classes; its
    # command line is imported by then. Under Daphne, nothing is imported.
    if "uvicorn.main" not in sys.modules:
        return
    module = importlib.import_module(
        "uvicorn.protocols.websockets.websockets_sansio_impl"
    )
    protocol = module.WebSocketsSansIOProtocol
    if not getattr(protocol.shutdown, _MARK, False):
        _close_with_window(protocol)


def _close_with_window(protocol: Any) -> None:
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
