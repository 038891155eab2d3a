"""Handshake policy: who is connecting, and from which page.

The same for a WebSocket and a Server-Sent Events stream (an HTTP scope,
refused with a plain 403). ``OriginPolicyMiddleware`` refuses a browser
handshake from a page whose host is not in ``DJANGO_ALLOWED_HOSTS``.
``TokenAuthMiddleware`` lets scripts sign in with ``Authorization: Token
<key>``; ``TokenAuthMiddlewareStack`` sends such handshakes past Channels'
session stack, and the others through it.
"""

import logging
from typing import Any
from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, User
from django.db import connection
from django.http.request import validate_host

from core import logs
from core.db import run_handshake
from core.services import credential_id

logger = logging.getLogger(__name__)

Scope = dict[str, Any]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a handshake header, decoded as Latin-1."""
    key: bytes
    value: bytes
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def deny(scope: Scope, receive: Any, send: Any) -> None:
    """Refuse a handshake (403): a WebSocket's, or a stream's request."""
    if scope["type"] != "http":
        await WebsocketDenier()(scope, receive, send)  # type: ignore[arg-type]  # a plain dict scope, as Channels passes it
        return
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"detail": "Refused."}'})


def origin_allowed(origin: str) -> bool:
    """True if the Origin's host is one of ``DJANGO_ALLOWED_HOSTS``."""
    try:
        hostname = urlsplit(origin).hostname
    except ValueError:
        return False
    if not hostname:
        return False
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return validate_host(hostname, settings.ALLOWED_HOSTS)


class OriginPolicyMiddleware:
    """Refuse (403) a handshake whose Origin is present and not allowed.

    A missing Origin means a non-browser client, which cannot be tricked into
    a cross-site request, so it is allowed (Channels' stock validator is not).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        origin = header(scope, b"origin")
        if origin is not None and not origin_allowed(origin):
            logs.limited(
                logger,
                logging.WARNING,
                "ws.origin_refused",
                "WebSocket refused: origin %r is not in DJANGO_ALLOWED_HOSTS",
                origin[:200],
            )
            await deny(scope, receive, send)
            return
        await self.app(scope, receive, send)


# The user's columns a connection reads; the rest load on access.
TOKEN_USER_FIELDS = ("id", "username", "is_active")
USER_BY_KEY_SQL = """
SELECT u.id, u.username, u.is_active
FROM authtoken_token t JOIN auth_user u ON u.id = t.user_id WHERE t.key = %s
"""


def _read_token_user(key: str) -> AbstractBaseUser | None:
    # One plain statement: the ORM's query building for a join was most of
    # a token handshake's database time (measured).
    with connection.cursor() as cursor:
        cursor.execute(USER_BY_KEY_SQL, [key])
        row = cursor.fetchone()
    if row is None:
        return None
    user = User.from_db(connection.alias, TOKEN_USER_FIELDS, row)
    return user if user.is_active else None


_user_for_token = run_handshake(_read_token_user)


class TokenAuthMiddleware(BaseMiddleware):
    """Sign a handshake in by ``Authorization: Token <key>``.

    A token beats the session cookie. A token that is present but invalid is
    refused (403), never treated as anonymous.
    """

    # An ASGI 3 application; the stubs' type also admits ASGI 2's.
    inner: Any

    # Scopes are plain dicts here, as Channels passes them (its stubs type
    # them as asgiref's TypedDicts; see core/accesslog.py).
    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:  # type: ignore[override]  # see above
        authorization = header(scope, b"authorization")
        if authorization is None:
            session = scope.get("session")
            key = getattr(session, "session_key", None)
            scope = dict(scope, credential=credential_id(key) if key else None)
            # self.inner, not super(): BaseMiddleware would copy the scope
            # again, and each copy lives as long as the connection.
            await self.inner(scope, receive, send)
            return
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        user = None
        if scheme.lower() == "token" and key and len(key) <= 64:
            user = await _user_for_token(key)
        if user is None:
            logs.limited(
                logger,
                logging.INFO,
                "ws.bad_authorization",
                "WebSocket refused: invalid Authorization header",
            )
            await deny(scope, receive, send)
            return
        # The key itself too: the warden checks that it still exists.
        scope = dict(scope, user=user, credential=credential_id(key), token_key=key)
        await self.inner(scope, receive, send)


class TokenAuthMiddlewareStack:
    """A token handshake goes straight to the token check; any other goes
    through cookies, sessions and users first.

    Channels' session stack parses cookies and reads the session's user on
    the database thread for every handshake; a script that signs in with a
    token needs neither, and in a reconnect storm every hop counts.
    """

    def __init__(self, inner: Any) -> None:
        self.token = TokenAuthMiddleware(inner)
        # An ASGI 3 application; the stubs' type also admits ASGI 2's.
        self.session: Any = AuthMiddlewareStack(TokenAuthMiddleware(inner))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if header(scope, b"authorization") is not None:
            await self.token(scope, receive, send)
        else:
            await self.session(scope, receive, send)
