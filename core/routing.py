"""WebSocket and Server-Sent Events URL routes."""

from typing import TYPE_CHECKING, Any, cast

from channels.security.websocket import WebsocketDenier
from django.urls import re_path

from core.consumers import RoomConsumer, RoomStreamConsumer
from core.models import SLUG_PATTERN

if TYPE_CHECKING:
    from channels.routing import URLRouter, _ExtendedURLPattern

# Channels routes ASGI apps with Django's re_path, which django-stubs types
# for views only; the channels stubs' URLRouter wants their own pattern type,
# which re_path cannot return. The two stubs disagree, not the code.
websocket_urlpatterns = cast(
    "list[_ExtendedURLPattern | URLRouter]",
    [
        re_path(
            rf"^ws/rooms/(?P<slug>{SLUG_PATTERN})/$",
            RoomConsumer.as_asgi(),  # type: ignore[arg-type]  # see above
        ),
        # Anything else is refused (403) rather than crashing the router.
        re_path(r"", WebsocketDenier.as_asgi()),  # type: ignore[arg-type]  # see above
    ],
)


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


SSE_PREFIX = "/sse/"
sse_urlpatterns = cast(
    "list[_ExtendedURLPattern | URLRouter]",
    [
        re_path(
            rf"^sse/rooms/(?P<slug>{SLUG_PATTERN})/$",
            RoomStreamConsumer.as_asgi(),  # type: ignore[arg-type]  # see above
        ),
        re_path(r"", _not_found),  # type: ignore[arg-type]  # see above
    ],
)


class StreamRouter:
    """Streams (``/sse/``) to ``streams``, other HTTP to ``app``: a stream
    lives for minutes, and must not hold one of Django's HTTP_CONCURRENCY
    turns (core.admission.HttpAdmission) for its life."""

    def __init__(self, streams: Any, app: Any) -> None:
        self.streams = streams
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(SSE_PREFIX):
            await self.streams(scope, receive, send)
        else:
            await self.app(scope, receive, send)
