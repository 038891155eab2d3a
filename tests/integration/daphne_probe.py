"""The project's ASGI application plus WebSockets that report, from inside
the Daphne process, what the open WebSockets keep of their upgrade and what
closed ones left behind (tests/integration/test_daphne_fix.py). Never served
outside the tests.

The cyclic collector is off in the server's process from its first
request on: whatever a closed connection left in a reference cycle stays
where a census can count it, instead of going at a collection that may or
may not have run. (Not at import: the tests import this module too.)
"""

import asyncio
import gc
import json
from typing import Any

from backend.asgi import application as project

PROBE_PATH = "/probe/upgrade-leftovers/"
CLOSED_PATH = "/probe/closed-leftovers/"
PROBES = {PROBE_PATH, CLOSED_PATH}


def census() -> dict[str, Any]:
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.web.http import HTTPChannel

    from core.servers.daphne import HANDSHAKE_LEFTOVERS, QUIET_DEFAULTS

    gc.collect()  # count what is reachable, not garbage awaiting a pass
    objects = gc.get_objects()
    sockets = [
        o for o in objects
        if isinstance(o, WebSocketProtocol)
        and o.state == o.STATE_OPEN
        and o.request.path not in PROBES
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
        "with_an_asyncio_queue": sum(
            isinstance(s.application_queue, asyncio.Queue) for s in sockets
        ),
        "with_own_send_queue": sum("send_queue" in vars(s) for s in sockets),
        "with_own_quiet_defaults": sum(
            any(vars(s).get(name, s) is value for name, value in QUIET_DEFAULTS.items())
            for s in sockets
        ),
        # Channels' own run loop keeps a task per connection waiting on
        # receive(); Switchboard's consumers await it in their own.
        "tasks_waiting_on_receive": sum(
            task.get_coro().__qualname__.endswith("Queue.get")
            for task in asyncio.all_tasks()
        ),
    }


def closed_census() -> dict[str, int]:
    """What is left of connections that have closed (no collection first)."""
    from daphne.ws_protocol import WebSocketProtocol

    from core.consumers import RoomConsumer
    from core.output import OutputGate

    objects = gc.get_objects()
    return {
        "closed_websockets": sum(
            isinstance(o, WebSocketProtocol) and o.state == o.STATE_CLOSED
            for o in objects
        ),
        "room_consumers": sum(isinstance(o, RoomConsumer) for o in objects),
        "output_gates": sum(isinstance(o, OutputGate) for o in objects),
    }


async def application(scope: dict, receive: Any, send: Any) -> None:
    gc.disable()
    if scope["type"] != "websocket" or scope["path"] not in PROBES:
        return await project(scope, receive, send)
    report = census() if scope["path"] == PROBE_PATH else closed_census()
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(report)})
    await send({"type": "websocket.close"})
