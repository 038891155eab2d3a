"""HTTP middleware."""

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse

HEALTH_PATH = "/healthz"


class HealthCheckMiddleware:
    """Answer ``/healthz`` before host validation and the HTTPS redirect.

    App Platform probes each instance over plain HTTP with an internal Host
    header; the check must pass while the process serves, with no I/O.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        if request.path in (HEALTH_PATH, HEALTH_PATH + "/"):
            return JsonResponse({"status": "ok"})
        return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if request.path in (HEALTH_PATH, HEALTH_PATH + "/"):
            return JsonResponse({"status": "ok"})
        return await self.get_response(request)
