"""Django settings for the tutorial baseline: the project's layer, nothing else.

The channel layer is the project's own ``CHANNEL_LAYERS`` (read from
``backend.settings``, so the same channels_redis options: ``socket_timeout``
None, capacity, expiry), with its prefix from ``SWITCHBOARD_CHANNEL_PREFIX``.
No database, no auth, no sessions: the tutorial's consumer needs none.
"""

from backend.settings import CHANNEL_LAYERS as _PROJECT_LAYERS

SECRET_KEY = "bench-tutorial-baseline-not-secret"  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["daphne", "channels"]
ROOT_URLCONF = "bench.baselines.tutorial_urls"
ASGI_APPLICATION = "bench.baselines.tutorial_asgi.application"
DATABASES: dict[str, object] = {}
USE_TZ = True
CHANNEL_LAYERS = _PROJECT_LAYERS
