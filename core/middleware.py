"""HTTP middleware."""

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.utils.functional import SimpleLazyObject

from core import logcontext
from core.logs import limited

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"

# Scripts, styles and everything else from this origin only; no plugins, no
# <base>, forms post here, and no framing. connect-src falls back to
# default-src, and 'self' admits this host's ws:/wss: too (CSP Level 3).
# The room page's one inline script, its import map, carries a nonce.
CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
PRIVATE_CACHE_CONTROL = "private, no-store"
DATABASE_UNAVAILABLE = "The database is unavailable for a moment. Try again shortly."


_Answer = HttpResponseBase | Awaitable[HttpResponseBase]


class _SyncAndAsync:
    """Middleware that runs in whichever mode its chain runs (Daphne: async)."""

    sync_capable = True
    async_capable = True
    # Returns a response, or an awaitable of one when is_async: which one
    # depends on the mode, so callers annotate what they get.
    get_response: Callable[[HttpRequest], Any]

    if TYPE_CHECKING:  # every subclass defines it; markcoroutinefunction needs it

        def __call__(self, request: HttpRequest) -> _Answer: ...

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)


class HealthCheckMiddleware(_SyncAndAsync):
    """Answer ``/healthz`` before host validation and the HTTPS redirect.

    App Platform probes each instance over plain HTTP with an internal Host
    header; the check must pass while the process serves, with no I/O.
    """

    def __call__(self, request: HttpRequest) -> _Answer:
        if self.is_async:
            return self._acall(request)
        if request.path in (HEALTH_PATH, HEALTH_PATH + "/"):
            return JsonResponse({"status": "ok"})
        response: HttpResponseBase = self.get_response(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if request.path in (HEALTH_PATH, HEALTH_PATH + "/"):
            return JsonResponse({"status": "ok"})
        response: HttpResponseBase = await self.get_response(request)
        return response


class LogContextMiddleware(_SyncAndAsync):
    """Log a request's lines with its scope, and its user and room after.

    The scope (its id, the client's address) is opened by
    ``core.accesslog``; Django runs the middleware in a task of its own,
    which adopts it. The user is noted once the view has answered, and only
    if something looked it up already: reading an unread session user would
    cost queries (and Django refuses them in async code). The room is the
    URL's ``slug``.
    """

    def __call__(self, request: HttpRequest) -> _Answer:
        if self.is_async:
            return self._acall(request)
        response: HttpResponseBase = self.get_response(request)
        _annotate_log(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        logcontext.adopt()
        response: HttpResponseBase = await self.get_response(request)
        _annotate_log(request)
        return response


def _annotate_log(request: HttpRequest) -> None:
    user = request.__dict__.get("user")
    if isinstance(user, SimpleLazyObject):
        # django.contrib.auth keeps the user here once it has been read.
        user = request.__dict__.get("_cached_user") or request.__dict__.get(
            "_acached_user"
        )
    match = request.resolver_match
    logcontext.annotate(
        user_id=user.pk if user is not None and user.is_authenticated else None,
        room=match.kwargs.get("slug") if match is not None else None,
    )


class CspNonce:
    """A per-request nonce, made when a template first uses it.

    Only a page that renders ``{{ request.csp_nonce }}`` gets one in its
    policy; every other answer admits no inline script at all.
    """

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: str | None = None

    def __str__(self) -> str:
        if self._value is None:
            self._value = secrets.token_urlsafe(18)
        return self._value

    @property
    def used(self) -> str | None:
        """The nonce if a template used it, else None."""
        return self._value


def content_security_policy(nonce: str | None = None) -> str:
    """The policy's header value, admitting the script with ``nonce``."""
    directives = dict(CONTENT_SECURITY_POLICY)
    if nonce is not None:
        directives["script-src"] += f" 'nonce-{nonce}'"
    return "; ".join(f"{name} {value}" for name, value in directives.items())


class SecurityHeadersMiddleware(_SyncAndAsync):
    """A Content-Security-Policy, and ``Cache-Control: private, no-store``.

    Django 5.2 has no CSP middleware (``django.middleware.csp`` arrives in
    6.0). Every answer the app computes depends on who asks (pages show who
    is signed in, the API answers per caller), so none may be kept by a
    shared cache or the browser; a view that sets Cache-Control itself
    keeps its own.
    """

    # csp_nonce is this middleware's own attribute on the request (templates
    # read it), unknown to HttpRequest's stubs.
    def __call__(self, request: HttpRequest) -> _Answer:
        if self.is_async:
            return self._acall(request)
        request.csp_nonce = CspNonce()  # type: ignore[attr-defined]
        return self._add_headers(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        request.csp_nonce = CspNonce()  # type: ignore[attr-defined]
        return self._add_headers(request, await self.get_response(request))

    def _add_headers(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        # Template responses are rendered by now, so the nonce is known.
        if "Content-Security-Policy" not in response:
            nonce = request.csp_nonce.used  # type: ignore[attr-defined]
            response["Content-Security-Policy"] = content_security_policy(nonce)
        if "Cache-Control" not in response:
            response["Cache-Control"] = PRIVATE_CACHE_CONTROL
        return response


class DatabaseUnavailableMiddleware(_SyncAndAsync):
    """Answer 503 with ``Retry-After`` when the database fails a request.

    PostgreSQL down, restarting or failing over, a pool with no connection to
    give, a statement past ``SWITCHBOARD_DB_STATEMENT_TIMEOUT_MS``: the
    request did nothing (its transaction rolled back) and can be retried, so
    it is a 503, JSON under ``/api/`` like every API error, and a WARNING in
    the log, not a 500 and an ERROR with a traceback. Any other exception is
    left to Django.
    """

    def __call__(self, request: HttpRequest) -> _Answer:
        answer: _Answer = self.get_response(request)
        return answer

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        limited(
            logger,
            logging.WARNING,
            "http.database_unavailable",
            "%s %s: the database failed (%s: %s); answered 503",
            request.method,
            request.path,
            type(exception).__name__,
            str(exception).split("\n", 1)[0][:200],
        )
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse(
                {"detail": DATABASE_UNAVAILABLE, "retry_after_ms": 1000}, status=503
            )
        else:
            response = HttpResponse(
                DATABASE_UNAVAILABLE,
                status=503,
                content_type="text/plain; charset=utf-8",
            )
        response["Retry-After"] = "1"
        return response
