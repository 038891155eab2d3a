"""Pages, and the readiness probe (``/healthz`` is answered by middleware)."""

import asyncio
import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import user_passes_test
from django.core.paginator import Page, Paginator
from django.db import connection
from django.db.models import F
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.timesince import timesince
from django.views import defaults
from django.views.decorators.http import require_http_methods
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from rest_framework.authtoken.models import Token

from core import access, logs, metrics, protocol, reads, services, shards, throttling
from core.forms import PasswordForm, RoomForm, SignupForm
from core.models import Membership

if TYPE_CHECKING:
    from django.contrib.auth.models import User as AuthUser

    from core.models import Room

    class SignedInRequest(HttpRequest):
        """A request that ``signed_in_required`` let through."""

        user: AuthUser


logger = logging.getLogger(__name__)

# Django's login_required, with the check that core.access makes.
signed_in_required = user_passes_test(access.is_signed_in)

READY_TIMEOUT_SECONDS = 2.0
READY_GROUP = "readyz"
# Messages rendered into the room page; older ones load on demand.
ROOM_PAGE_MESSAGES = 50
# Rooms per page of the home page's list (``?page=``).
HOME_PAGE_ROOMS = 50


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()


async def _channel_layer_round_trip() -> None:
    # A publish to a group nobody joins, on every Redis server (shard): a
    # round trip each that leaves nothing behind. (A receive would need a
    # subscription of its own per request on the pub/sub layer; whether
    # subscriptions deliver is what core.fanout's hub probes.)
    layer = get_channel_layer()
    ping = {"type": "readyz.ping"}
    await asyncio.gather(
        *(
            layer.group_send(shards.group_on(shard, READY_GROUP), ping)  # type: ignore[union-attr]  # CHANNEL_LAYERS always set
            for shard in range(max(1, shards.count()))
        )
    )


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


async def metrics_endpoint(request: HttpRequest) -> HttpResponse:
    """The fleet's metrics for Prometheus, to the holder of the token only.

    Off (404) without ``SWITCHBOARD_METRICS_TOKEN``; 401 without the token.
    """
    if not settings.METRICS_TOKEN:
        raise Http404
    if not metrics.token_matches(request.headers.get("Authorization", "")):
        logs.limited(logger, logging.WARNING, "http.metrics_token",
                     "/metrics refused a request without the right token")  # fmt: skip
        response = HttpResponse("A bearer token is required.\n", status=401,
                                content_type="text/plain; charset=utf-8")  # fmt: skip
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(
        await metrics.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4
    )


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 404 of a URL no route matches (``handler404``): JSON under
    ``/api/``, as every API error is (a room slug outside the route's
    pattern lands here), else Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def _activity(moment: datetime | None) -> str:
    """The age of a last message in words, e.g. "5 minutes ago"; "" if none."""
    if moment is None:
        return ""
    if timezone.now() - moment < timedelta(minutes=1):
        return "just now"
    return f"{timesince(moment, depth=1)} ago"


def _rooms_for(user: access.User, page_number: int | str = 1) -> "Page[Room]":
    """A page of visible rooms, most recently active first, then the silent
    ones; a page number out of range gives the nearest page.

    Each room carries ``activity``, its last message's age in words.
    """
    # nulls_last: PostgreSQL sorts NULL first in a descending order.
    rooms = access.visible_rooms(user).order_by(
        F("last_message_at").desc(nulls_last=True), "slug"
    )
    page = Paginator(rooms, HOME_PAGE_ROOMS).get_page(page_number)
    for room in page:
        room.activity = _activity(room.last_message_at)  # type: ignore[attr-defined]  # for the template only
    return page


def _home(
    request: HttpRequest, form: RoomForm, status: int = 200, refusal: str = ""
) -> HttpResponse:
    page = _rooms_for(request.user, request.GET.get("page", 1))
    context = {"rooms": page, "form": form, "refusal": refusal}
    return render(request, "core/home.html", context, status=status)


def home(request: HttpRequest) -> HttpResponse:
    """The rooms the visitor can see, a page at a time, and a form to create
    one."""
    return _home(request, RoomForm())


@signed_in_required
@require_http_methods(["POST"])
def create_room(request: "SignedInRequest") -> HttpResponse:
    """Create a room from the home page's form, then open it."""
    form = RoomForm(request.POST)
    if not form.is_valid():
        return _home(request, form, status=400)
    # Counted like the API's POST /api/rooms/ (one bucket per user).
    refusal = throttling.check_write("rooms.create", request.user)
    if refusal is not None:
        return refusal.apply(_home(request, form, refusal=refusal.detail))
    try:
        room = services.create_room(owner=request.user, **form.cleaned_data)
    except services.SlugTaken:
        form.add_error("slug", "That slug is taken.")
    except services.InvalidRoomName:
        form.add_error("slug", "Give a slug: none can be made from this name.")
    else:
        return redirect("room", slug=room.slug)
    return _home(request, form, status=400)


def room(request: HttpRequest, slug: str) -> HttpResponse:
    """The chat page of one room; the live part is static/core/js/room.js.

    The latest messages are embedded in the page, so it shows them at once
    and the socket resumes right after them with ``?after=``.
    """
    found = access.readable_room(request.user, slug)
    if found is None:
        raise Http404("No such room.")
    at = _seq_or_none(request.GET.get("at"))
    if at is not None and not 1 <= at <= found.last_seq:
        at = None  # no such message: the latest, as without ``at``
    if at is None:
        latest, has_more = services.history(
            room=found, before=None, after=None, limit=ROOM_PAGE_MESSAGES
        )
    else:
        # Opened at a message (a search result): the page holds the messages
        # around it, and the socket resumes after them as usual, bringing
        # the rest up to the latest.
        latest, has_more = services.history(
            room=found, before=at + 1, after=None, limit=ROOM_PAGE_MESSAGES // 2
        )
        later, _ = services.history(
            room=found, before=None, after=at, limit=ROOM_PAGE_MESSAGES // 2
        )
        latest += later
    can_post = access.can_post(request.user, found)
    return render(
        request,
        "core/room.html",
        {
            "room": found,
            "can_post": can_post,
            # The owner and staff get a Delete button on every message; the
            # server decides again for each deletion.
            "can_moderate": can_post and access.can_audit(request.user, found),
            "initial": {"messages": latest, "has_more": has_more, "at": at},
            "sidebar": _sidebar_rooms(request.user, found),
            "members": _members(found),
            "is_owner": access.is_signed_in(request.user)
            and found.owner_id == request.user.pk,
            "can_manage_members": access.can_manage_members(request.user, found),
            "can_leave": access.can_leave(request.user, found),
        },
    )


def _sidebar_rooms(user: access.User, current: "Room") -> list[dict[str, object]]:
    """The room page's sidebar: the rooms ``user`` can see, by slug, with
    their counts, as the ``rooms`` frame lists them (``WATCH_ROOMS_LIMIT``),
    so the page shows them before its socket opens; the current room is
    always in. A guest's have no counts."""
    limit = settings.WATCH_ROOMS_LIMIT
    rooms: list[dict[str, object]]
    if access.is_signed_in(user):
        rooms = [dict(entry) for entry in reads.watched_rooms(user, limit)[0]]
    else:
        visible = access.visible_rooms(user).order_by("slug")[:limit]
        rooms = [
            {"slug": room.slug, "name": room.name, "is_private": room.is_private}
            for room in visible
        ]
    if all(room["slug"] != current.slug for room in rooms):
        rooms.append(
            {
                "slug": current.slug,
                "name": current.name,
                "is_private": current.is_private,
            }
        )
        rooms.sort(key=lambda room: str(room["slug"]))
    return rooms


def _members(room: "Room") -> list[dict[str, object]]:
    """A private room's members, by username, the owner marked; [] if public."""
    if not room.is_private:
        return []
    names = Membership.objects.filter(room=room).values_list(
        "user__username", "user_id"
    )
    return [
        {"username": name, "is_owner": user_id == room.owner_id}
        for name, user_id in sorted(names)
    ]


def _seq_or_none(text: str | None) -> int | None:
    """``?at=``: a seq; anything else is ignored (the latest messages)."""
    try:
        return protocol.parse_seq_text("at", text or "")
    except protocol.ProtocolError:
        return None


def signup(request: HttpRequest) -> HttpResponse:
    """Create an account and sign in.

    Each submission counts as a sign-in attempt of the client's address
    (before validation, which tells whether a username exists), and each
    account as one created from it; hashing the password waits for a slot.
    """
    if request.method != "POST":
        return render(request, "registration/signup.html", {"form": SignupForm()})
    refusal = throttling.check_attempt(request)
    form = SignupForm(request.POST)
    if refusal is None and form.is_valid():
        refusal = throttling.check_new_account(request)
        if refusal is None:
            try:
                with throttling.password_hashing():
                    user = services.sign_up(
                        username=form.cleaned_data["username"],
                        password=form.cleaned_data["password1"],
                    )
            except throttling.Busy as exc:
                refusal = exc.refusal
            else:
                return _signed_up(request, user)
    if refusal is None:
        return render(request, "registration/signup.html", {"form": form})
    # An empty form, ready for the next try, with the username kept.
    form = SignupForm(initial={"username": request.POST.get("username", "")})
    context = {"form": form, "refusal": refusal.detail}
    return refusal.apply(render(request, "registration/signup.html", context))


def _signed_up(request: HttpRequest, user: "AuthUser") -> HttpResponse:
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    messages.success(request, f"Welcome to Switchboard, {user.get_username()}.")
    return redirect("home")


def credential_page(
    view: Callable[..., HttpResponseBase],
) -> Callable[..., HttpResponseBase]:
    """Wrap a sign-in view whose form is ``forms.CredentialLimitsMixin``: a
    refused submission answers 429 (or 503) with ``Retry-After``, the page
    and its form as usual."""

    @functools.wraps(view)
    def wrapped(
        request: HttpRequest, *args: object, **kwargs: object
    ) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        form = (getattr(response, "context_data", None) or {}).get("form")
        refusal = getattr(form, "refusal", None)
        if refusal is not None:
            refusal.apply(response)
        return response

    return wrapped


# --- the account page ------------------------------------------------------------

# How much of the API token's key the account page shows.
TOKEN_TAIL = 4


def _account(
    request: "SignedInRequest",
    form: PasswordForm,
    status: int = 200,
    refusal: str = "",
) -> HttpResponse:
    token = Token.objects.filter(user=request.user).first()
    context = {
        "form": form,
        "refusal": refusal,
        # Never the whole key: its last characters tell tokens apart.
        "token": None
        if token is None
        else {"created": token.created, "tail": token.key[-TOKEN_TAIL:]},
    }
    return render(request, "core/account.html", context, status=status)


@signed_in_required
def account(request: "SignedInRequest") -> HttpResponse:
    """The signed-in user's account: change the password, see and revoke
    the API token."""
    return _account(request, PasswordForm(request.user))


@signed_in_required
@require_http_methods(["POST"])
def change_password(request: "SignedInRequest") -> HttpResponse:
    """Change the password; this browser stays signed in, every other
    session of the user ends and its sockets close (4403).

    Counted like a sign-in attempt (the address, and a password check of
    the username when a current password is given, before it is checked);
    checking the current password and hashing the new one hold a hashing
    slot.
    """
    form = PasswordForm(request.user, request.POST)
    refusal = throttling.check_attempt(request)
    if refusal is None and request.POST.get("old_password"):
        refusal = throttling.check_password_check(request, request.user.get_username())
    if refusal is None:
        try:
            with throttling.password_hashing():
                if form.is_valid():
                    ended = services.change_password(
                        user=request.user,
                        new_password=form.cleaned_data["new_password1"],
                        keep_session=request.session,
                    )
                    messages.success(request, _changed(ended))
                    return redirect("account")
        except throttling.Busy as exc:
            refusal = exc.refusal
    if refusal is None:
        return _account(request, form, status=400)
    # The passwords are not sent back: an empty form, ready for the next try.
    response = _account(request, PasswordForm(request.user), refusal=refusal.detail)
    return refusal.apply(response)


def _changed(ended: int) -> str:
    others = (
        "No other session was signed in."
        if ended == 0
        else f"Signed out {ended} other session{'s' if ended != 1 else ''}."
    )
    return f"Your password was changed. {others}"


@signed_in_required
@require_http_methods(["POST"])
def revoke_token(request: "SignedInRequest") -> HttpResponse:
    """Delete the user's API token; the sockets it opened close (4403)."""
    services.revoke_tokens(user_id=request.user.pk)
    messages.success(request, "Your API token was revoked.")
    return redirect("account")
