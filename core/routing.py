"""WebSocket URL routes."""

from typing import TYPE_CHECKING, cast

from channels.security.websocket import WebsocketDenier
from django.urls import re_path

from core.consumers import RoomConsumer
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
