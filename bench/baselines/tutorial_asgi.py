"""ASGI entry of the tutorial baseline.

    DJANGO_SETTINGS_MODULE=bench.baselines.tutorial_settings \\
        daphne bench.baselines.tutorial_asgi:application
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.baselines.tutorial_settings")

# As in the tutorial: set Django up before importing consumers.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from bench.baselines.tutorial_consumer import ChatConsumer  # noqa: E402

websocket_urlpatterns = [
    re_path(r"^ws/rooms/(?P<room_name>[a-z0-9-]+)/$", ChatConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)}
)
