"""``/healthz`` only, so the bench's process harness can wait for start-up."""

from django.http import HttpRequest, JsonResponse
from django.urls import path


def healthz(request: HttpRequest) -> JsonResponse:
    """200 while the process serves."""
    return JsonResponse({"status": "ok"})


urlpatterns = [path("healthz", healthz)]
