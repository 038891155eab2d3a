"""A Server-Sent Events client for the ASGI application, in process."""

import json
from typing import Any
from urllib.parse import urlsplit

from channels.testing import ApplicationCommunicator


def sse_scope(
    path: str, headers: list[tuple[bytes, bytes]] | None = None, method: str = "GET"
) -> dict[str, Any]:
    parts = urlsplit(path)
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


class Stream:
    """One stream: its status and headers, then its events, as parsed by a
    browser's EventSource (id, event, data, retry; comments kept apart)."""

    def __init__(self, app: Any, path: str, headers=None, method: str = "GET"):
        self.communicator = ApplicationCommunicator(
            app, sse_scope(path, headers, method)
        )
        self.buffer = b""
        self.ended = False
        self.comments = 0
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    async def open(self, timeout: float = 5) -> "Stream":  # noqa: ASYNC109
        await self.communicator.send_input(
            {"type": "http.request", "body": b"", "more_body": False}
        )
        start = await self.communicator.receive_output(timeout)
        assert start["type"] == "http.response.start", start
        self.status = start["status"]
        self.headers = dict(start.get("headers", []))
        return self

    async def _more(self, timeout: float) -> None:  # noqa: ASYNC109
        if self.ended:
            raise AssertionError("the stream has ended")
        message = await self.communicator.receive_output(timeout)
        assert message["type"] == "http.response.body", message
        self.buffer += message.get("body", b"")
        self.body += message.get("body", b"")
        self.ended = not message.get("more_body", False)

    async def event(self, timeout: float = 5) -> dict[str, Any]:  # noqa: ASYNC109
        """The next event block, comments skipped."""
        while True:
            while b"\n\n" not in self.buffer:
                await self._more(timeout)
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            event: dict[str, Any] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                event[field] = value[1:] if value.startswith(" ") else value
            if not event:
                self.comments += 1
                continue
            if "data" in event:
                event["data"] = json.loads(event["data"])
            return event

    async def frame(self, timeout: float = 5) -> dict[str, Any]:  # noqa: ASYNC109
        """The next event that carries data, with its id (if any) as ``_id``."""
        while True:
            event = await self.event(timeout)
            if "data" in event:
                frame = dict(event["data"])
                if "id" in event:
                    frame["_id"] = event["id"]
                if "event" in event:
                    frame["_event"] = event["event"]
                return frame

    async def until(self, kind: str, timeout: float = 5) -> tuple[dict, list[dict]]:  # noqa: ASYNC109
        skipped = []
        while True:
            frame = await self.frame(timeout)
            if frame.get("type") == kind:
                return frame, skipped
            skipped.append(frame)

    async def close(self) -> None:
        await self.communicator.send_input({"type": "http.disconnect"})
        await self.communicator.wait(5)
