"""Pages, and the readiness probe (``/healthz`` is answered by middleware)."""

import asyncio
import logging

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from core import access, services
from core.forms import RoomForm

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 2.0


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()


async def _channel_layer_round_trip() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel("readyz.")
    await layer.send(channel, {"type": "readyz.ping"})
    await layer.receive(channel)


async def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database and a channel-layer round trip answer, else 503."""
    checks = {
        "database": sync_to_async(_database_answers, thread_sensitive=False)(),
        "channel_layer": _channel_layer_round_trip(),
    }
    failing = []
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, READY_TIMEOUT_SECONDS)
        except Exception as exc:
            logger.warning("readyz: %s failing (%s)", name, exc.__class__.__name__)
            failing.append(name)
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing}, status=503)
    return JsonResponse({"status": "ok"})


def home(request: HttpRequest) -> HttpResponse:
    """The rooms the visitor can see, and a form to create one."""
    rooms = access.visible_rooms(request.user).order_by("-last_message_at", "slug")
    return render(request, "core/home.html", {"rooms": rooms, "form": RoomForm()})


@login_required
@require_http_methods(["POST"])
def create_room(request: HttpRequest) -> HttpResponse:
    form = RoomForm(request.POST)
    if form.is_valid():
        try:
            room = services.create_room(owner=request.user, **form.cleaned_data)
        except services.SlugTaken:
            form.add_error("slug", "That slug is taken.")
        except services.InvalidRoomName:
            form.add_error("slug", "Give a slug: none can be made from this name.")
        else:
            return redirect("room", slug=room.slug)
    rooms = access.visible_rooms(request.user).order_by("-last_message_at", "slug")
    return render(request, "core/home.html", {"rooms": rooms, "form": form}, status=400)


def room(request: HttpRequest, slug: str) -> HttpResponse:
    """The chat page of one room; the live part is static/core/js/room.js."""
    found = access.readable_room(request.user, slug)
    if found is None:
        raise Http404("No such room.")
    return render(
        request,
        "core/room.html",
        {"room": found, "can_post": access.can_post(request.user, found)},
    )


def signup(request: HttpRequest) -> HttpResponse:
    """Create an account and sign in."""
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome to Switchboard.")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})
