"""WebSocket URL routes."""

from channels.security.websocket import WebsocketDenier
from django.urls import re_path

from core.consumers import RoomConsumer
from core.models import SLUG_PATTERN

websocket_urlpatterns = [
    re_path(rf"^ws/rooms/(?P<slug>{SLUG_PATTERN})/$", RoomConsumer.as_asgi()),
    # Anything else is refused (403) rather than crashing the router.
    re_path(r"", WebsocketDenier.as_asgi()),
]
