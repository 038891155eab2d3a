"""The project's ASGI application plus one WebSocket that reports, from
inside the Daphne process, what the open WebSockets keep of their upgrade
(tests/integration/test_daphne_fix.py). Never served outside the tests.
"""

import gc
import json
from typing import Any

from backend.asgi import application as project

PROBE_PATH = "/probe/upgrade-leftovers/"


def census() -> dict[str, Any]:
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.web.http import HTTPChannel

    from core.daphne_fix import HANDSHAKE_LEFTOVERS

    gc.collect()  # count what is reachable, not garbage awaiting a pass
    objects = gc.get_objects()
    sockets = [
        o for o in objects
        if isinstance(o, WebSocketProtocol)
        and o.state == o.STATE_OPEN
        and o.request.path != PROBE_PATH
    ]  # fmt: skip
    # The HTTP side of a connection shares its transport with the WebSocket.
    upgraded_from = {id(o.transport) for o in objects if isinstance(o, HTTPChannel)}
    options = WebSocketProtocol.CONFIG_ATTRS
    return {
        "open_websockets": len(sockets),
        "holding_their_http_request": sum(
            id(s.transport) in upgraded_from for s in sockets
        ),
        "with_handshake_leftovers": sum(
            any(vars(s).get(name) is not None for name in HANDSHAKE_LEFTOVERS)
            for s in sockets
        ),
        "with_own_option_copies": sum(
            any(name in vars(s) for name in options) for s in sockets
        ),
        "with_options_unlike_the_factory": sum(
            any(getattr(s, name) != getattr(s.factory, name) for name in options)
            for s in sockets
        ),
    }


async def application(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket" or scope["path"] != PROBE_PATH:
        return await project(scope, receive, send)
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(census())})
    await send({"type": "websocket.close"})
