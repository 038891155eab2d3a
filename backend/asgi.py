"""ASGI entry point: ``daphne -b 0.0.0.0 -p 8080 backend.asgi:application``.

Every request and connection first gets its log scope and access log lines
(core.accesslog). HTTP goes to Django, at most HTTP_CONCURRENCY requests at
once, but for ``/livez``, answered from the event loop's heartbeat
(core.liveness), and ``/sse/`` streams, which take the WebSocket's origin
policy and auth but not the HTTP queue (core.routing.StreamRouter).
WebSockets go through admission control (a bound on handshakes in
progress), the origin policy, then the session/token auth stack, then the
URL router.
"""

import gc
import os

from django.core.asgi import get_asgi_application

from backend.env import exit_on_bad_configuration, require_runtime_settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")

# A bad variable stops the server here with one line instead of a traceback.
exit_on_bad_configuration(require_runtime_settings)

# get_asgi_application() runs django.setup(), which must happen before
# anything below imports models (the routing imports the consumers).
django_asgi_app = get_asgi_application()

from channels.routing import URLRouter  # noqa: E402

from core import consumers, routing  # noqa: E402
from core.accesslog import AccessLogRouter, quiet_daphne  # noqa: E402
from core.admission import AdmissionMiddleware, HttpAdmission  # noqa: E402
from core.auth import OriginPolicyMiddleware, TokenAuthMiddlewareStack  # noqa: E402
from core.liveness import LivenessMiddleware  # noqa: E402
from core.servers import daphne, uvicorn  # noqa: E402

daphne.apply()  # shutdown closes every socket with 4012, and more
uvicorn.apply(consumers.shutdown_reason)  # 1012 names the window
quiet_daphne()  # AccessLogRouter writes the access log, with the real client

# Channels' ProtocolTypeRouter, which also opens each request's and
# connection's log scope and writes its access lines.
application = AccessLogRouter(
    {
        # /livez is answered (and the loop's heartbeat started) ahead of the
        # HTTP queue and Django: a busy instance is not a stuck one.
        # Server-Sent Events streams (/sse/) take the WebSocket's policy and
        # auth, ahead of Django's bounded queue of HTTP requests.
        "http": routing.StreamRouter(
            AdmissionMiddleware(
                OriginPolicyMiddleware(
                    TokenAuthMiddlewareStack(URLRouter(routing.sse_urlpatterns))
                )
            ),
            LivenessMiddleware(HttpAdmission(django_asgi_app)),
        ),
        "websocket": AdmissionMiddleware(
            OriginPolicyMiddleware(
                TokenAuthMiddlewareStack(URLRouter(routing.websocket_urlpatterns))
            )
        ),
    }
)

# What is loaded by now lives as long as the process. Frozen, it is left out
# of the collector's full passes, which otherwise walk it again and again and
# stall every connection for tens of milliseconds (docs/performance.md).
gc.collect()
gc.freeze()
