"""Raw baseline: a minimal ``websockets`` server with Redis pub/sub fan-out.

    python -m bench.baselines.raw_server --port 8001 [--loop asyncio]

Each process PSUBSCRIBEs once to every room's channel and, for each message,
writes one encoded frame to its local connections with
``websockets.broadcast`` (no per-connection queue, task or layer). A ``send``
frame is published to the room's channel; nothing is stored, nobody signs in.
``GET /healthz`` answers 200 so the bench can wait for it. Environment:
``REDIS_URL`` (required), ``RAW_PREFIX`` (channel prefix, default ``raw``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections import defaultdict
from http import HTTPStatus
from typing import Any

from redis import asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

logger = logging.getLogger("raw_server")

ROOM_PATH = re.compile(r"^/ws/rooms/([a-z0-9][a-z0-9-]{0,49})/$")
MAX_FRAME_BYTES = 64 * 1024


class Broadcaster:
    """Local connections per room, and the one Redis subscription feeding them."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=None)
        self.prefix = f"{prefix}:room:"
        self.rooms: dict[str, set[ServerConnection]] = defaultdict(set)

    def channel(self, room: str) -> str:
        return f"{self.prefix}{room}"

    async def listen(self) -> None:
        """Fan every published frame out to this process's connections."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(f"{self.prefix}*")
        skip = len(self.prefix)
        async for item in pubsub.listen():
            room = item["channel"][skip:].decode()
            connections = self.rooms.get(room)
            if connections:
                broadcast(connections, item["data"], text=True)

    async def handle(self, connection: ServerConnection) -> None:
        """One client: welcome, then publish each ``send`` frame it sends."""
        match = ROOM_PATH.match(connection.request.path if connection.request else "")
        if match is None:
            await connection.close(4404)
            return
        room = match.group(1)
        members = self.rooms[room]
        members.add(connection)
        try:
            await connection.send(json.dumps({"type": "welcome", "room": room}))
            async for text in connection:
                await self.receive(room, text)
        finally:
            members.discard(connection)

    async def receive(self, room: str, text: str | bytes) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict) or frame.get("type") != "send":
            return
        message = {
            "type": "message",
            "room": room,
            "body": frame.get("body"),
            "client_id": frame.get("client_id"),
        }
        await self.redis.publish(self.channel(room), json.dumps(message))


def health(connection: ServerConnection, request: Request) -> Response | None:
    """Answer ``GET /healthz`` without a WebSocket upgrade."""
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def serve_forever(host: str, port: int) -> None:
    broadcaster = Broadcaster(
        os.environ["REDIS_URL"], os.environ.get("RAW_PREFIX", "raw")
    )
    listener = asyncio.create_task(broadcaster.listen())
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        broadcaster.handle,
        host,
        port,
        process_request=health,
        max_size=MAX_FRAME_BYTES,
    ):
        logger.info("raw server on %s:%d", host, port)
        await stop
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.raw_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runner: Any = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    runner(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
