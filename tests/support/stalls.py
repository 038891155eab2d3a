"""Test-only ASGI application that blocks its own event loop on cue.

It wraps the project's ``backend.asgi:application`` and adds one route,
``POST /test-only/block-loop?seconds=S&times=N&gap=G``: answered 202 at
once, after which the event loop is blocked with ``time.sleep(S)``, N times
(default 1), G seconds apart (default 0), as a synchronous call on an async
path would block it. Served only as
``daphne tests.support.stalls:application``; nothing here is importable by
the project itself, which has no such hook.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs

from backend.asgi import application as project_application

BLOCK_LOOP_PATH = "/test-only/block-loop"
# The answer goes out before the first block starts.
FIRST_BLOCK_DELAY_SECONDS = 0.05


def _block(
    loop: asyncio.AbstractEventLoop, seconds: float, times: int, gap: float
) -> None:
    time.sleep(seconds)  # the point: nothing else on this loop runs meanwhile
    if times > 1:
        loop.call_later(gap, _block, loop, seconds, times - 1, gap)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http" or scope["path"] != BLOCK_LOOP_PATH:
        return await project_application(scope, receive, send)
    query = parse_qs(scope["query_string"].decode())
    seconds = float(query["seconds"][0])
    times = int(query.get("times", ["1"])[0])
    gap = float(query.get("gap", ["0"])[0])
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b""})
    loop = asyncio.get_running_loop()
    loop.call_later(FIRST_BLOCK_DELAY_SECONDS, _block, loop, seconds, times, gap)
    return None
