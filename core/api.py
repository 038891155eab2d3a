"""The HTTP API (Django REST Framework): tokens, rooms, members, users, messages.

Views validate with serializers and call ``core.services``; errors are JSON
with a 4xx status. Unknown rooms and rooms the caller may not see are 404.
Sign-in attempts, password hashing and writes per user are throttled by
``core.throttling`` (429 or 503 with ``Retry-After`` and ``retry_after_ms``).
"""

import logging
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers, status
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from core import access, clientaddr, limits, protocol, reads, services, throttling
from core.models import SLUG_PATTERN, Room

if TYPE_CHECKING:
    from django.contrib.auth.models import User as AuthUser

    class SignedInRequest(Request):
        """A request that the ``SignedIn`` permission let through."""

        user: AuthUser


logger = logging.getLogger(__name__)

# GET /api/rooms/ pages: ``limit`` rooms (default, most) after a slug cursor.
ROOMS_PAGE_DEFAULT = 100
ROOMS_PAGE_MAX = 500


class SignedIn(IsAuthenticated):
    """DRF's signed-in permission (and its 401), decided by
    ``access.is_signed_in`` like every other signed-in check."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return access.is_signed_in(request.user)


class SchemaView(SpectacularAPIView):
    """The OpenAPI document; its refusals are JSON like every API error,
    not the YAML of the document."""

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with every error under ``detail``.

    A body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a JSON 413, where Django
    would answer its HTML 400 page.
    """
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            {"detail": f"The request body is over {limit} bytes."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if not (isinstance(response.data, dict) and "detail" in response.data):
        response.data = {"detail": "Invalid input.", "errors": response.data}
    if isinstance(exc, Throttled) and exc.wait is not None:  # type: ignore[attr-defined]  # set in __init__, not in drf-stubs
        response.data["retry_after_ms"] = max(1, math.ceil(exc.wait * 1000))  # type: ignore[attr-defined]  # as above
    return response


def refusal_response(refusal: throttling.Refusal) -> Response:
    """A 429 or 503 that says when to try again, in the header and the body."""
    body = {"detail": refusal.detail, "retry_after_ms": refusal.retry_after_ms}
    response = Response(body, status=refusal.status)
    response["Retry-After"] = str(refusal.retry_after_seconds)
    return response


@extend_schema_field(OpenApiTypes.STR)
class BodyField(serializers.Field[str, object, str, str]):
    """A message body under the WebSocket ``send`` rules (never trimmed)."""

    def to_internal_value(self, data: object) -> str:
        try:
            return protocol.validate_body(data)
        except protocol.ProtocolError as exc:
            raise serializers.ValidationError(exc.detail, code=exc.code) from None

    def to_representation(self, value: str) -> str:
        return value


@extend_schema_field(
    {"type": "string", "nullable": True, "pattern": "^[A-Za-z0-9_-]{1,64}$"}
)
class ClientIdField(serializers.Field[str | None, object, str | None, str | None]):
    """Optional 1-64 of ``[A-Za-z0-9_-]``."""

    def to_internal_value(self, data: object) -> str | None:
        try:
            return protocol.validate_client_id(data)
        except protocol.ProtocolError as exc:
            raise serializers.ValidationError(exc.detail, code=exc.code) from None

    def to_representation(self, value: str | None) -> str | None:
        return value


class StrictBooleanField(serializers.BooleanField):
    """JSON ``true``/``false`` only (DRF also takes "yes", 1, ...)."""

    def to_internal_value(self, data: object) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError("Must be true or false.")
        return data


if TYPE_CHECKING:
    _StringOnlyBase = serializers.CharField
else:
    _StringOnlyBase = object


class StringOnly(_StringOnlyBase):
    """JSON strings only, as the document says (DRF's CharField also takes
    numbers and turns them into text)."""

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("invalid")  # "Not a valid string."
        return super().to_internal_value(data)


class StrictCharField(StringOnly, serializers.CharField):
    pass


class StrictRegexField(StringOnly, serializers.RegexField):
    pass


class TokenRequestSerializer(serializers.Serializer[Any]):
    username = StrictCharField(max_length=150)
    password = StrictCharField(max_length=4096, trim_whitespace=False)


class TokenSerializer(serializers.Serializer[Any]):
    token = serializers.CharField()


class RoomSerializer(serializers.ModelSerializer[Room]):
    class Meta:
        model = Room
        fields = ["slug", "name", "is_private", "last_seq", "last_message_at"]


class RoomCreateSerializer(serializers.Serializer[Any]):
    name = StrictCharField(min_length=1, max_length=100)
    # Absent: None, and services.create_room derives it from the name.
    slug = StrictRegexField(rf"^{SLUG_PATTERN}\Z", required=False, default=None)
    is_private = StrictBooleanField(required=False, default=False)


class RoomRenameSerializer(serializers.Serializer[Any]):
    # Stripped, then 1-100 characters (blank is refused).
    name = StrictCharField(min_length=1, max_length=services.ROOM_NAME_MAX)


class MemberSerializer(serializers.Serializer[Any]):
    username = StrictCharField(max_length=150)


class MemberListSerializer(serializers.Serializer[Any]):
    """One member of a private room; ``is_owner`` marks its owner."""

    username = serializers.CharField()
    is_owner = serializers.BooleanField()


class UsernameSerializer(serializers.Serializer[Any]):
    username = serializers.CharField()


class MessageSerializer(serializers.Serializer[Any]):
    type = serializers.CharField()
    room = serializers.CharField()
    seq = serializers.IntegerField()
    author = serializers.CharField(allow_null=True)
    body = serializers.CharField(allow_blank=True)  # "" once deleted
    sent_at = serializers.CharField()
    client_id = serializers.CharField(allow_null=True)
    # Only on an edited or deleted message, and on changes (edit, delete).
    edited_at = serializers.CharField(required=False)
    deleted = serializers.BooleanField(required=False)
    kind = serializers.ChoiceField(["edit", "delete"], required=False)
    target = serializers.IntegerField(required=False)


class MessageCreateSerializer(serializers.Serializer[Any]):
    body = BodyField()
    client_id = ClientIdField(required=False, default=None, allow_null=True)


class MessageDeleteSerializer(serializers.Serializer[Any]):
    client_id = ClientIdField(required=False, default=None, allow_null=True)


class DeletionSerializer(serializers.Serializer[Any]):
    seq = serializers.IntegerField()
    target = serializers.IntegerField()
    deleted_by = serializers.CharField(allow_null=True)
    deleted_at = serializers.CharField()


class DeletionPageSerializer(serializers.Serializer[Any]):
    deletions = DeletionSerializer(many=True)
    has_more = serializers.BooleanField()


class MessagePageSerializer(serializers.Serializer[Any]):
    messages = MessageSerializer(many=True)
    has_more = serializers.BooleanField()


class SegmentSerializer(serializers.Serializer[Any]):
    """A piece of a snippet, as text (never HTML); ``match``: it matched."""

    text = serializers.CharField()
    match = serializers.BooleanField()


class SearchHitSerializer(serializers.Serializer[Any]):
    room = serializers.CharField()
    room_name = serializers.CharField()
    seq = serializers.IntegerField()
    author = serializers.CharField(allow_null=True)
    sent_at = serializers.CharField()
    snippet = SegmentSerializer(many=True)


class SearchPageSerializer(serializers.Serializer[Any]):
    results = SearchHitSerializer(many=True)
    has_more = serializers.BooleanField()


class ErrorSerializer(serializers.Serializer[Any]):
    """An error: ``detail`` says what is wrong; invalid input adds ``errors``,
    each field's messages."""

    detail = serializers.CharField()
    # DRF's metaclass takes declared fields off the class, so
    # Serializer.errors is left alone; the stubs see the class attribute.
    errors = serializers.DictField(  # type: ignore[assignment]  # see above
        child=serializers.ListField(child=serializers.CharField()), required=False
    )


class RefusalSerializer(serializers.Serializer[Any]):
    """A refusal (429, 503): try again in ``retry_after_ms``, which
    ``Retry-After`` says in whole seconds."""

    detail = serializers.CharField()
    retry_after_ms = serializers.IntegerField(min_value=1)


# --- what the OpenAPI document says besides the serializers ---------------------

# Security requirements, named as drf-spectacular names the two authenticators.
# extend_schema(auth=...) puts them in the document as they are (they replace
# AutoSchema.get_auth's list of requirements); its hint says Sequence[str].
SIGNED_IN = cast("Sequence[str]", [{"tokenAuth": []}, {"cookieAuth": []}])


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


def _refusal(description: str) -> OpenApiResponse:
    return OpenApiResponse(RefusalSerializer, description=description)


# Every route answers an invalid token with 401, even where anonymous callers
# are served; routes that read a body refuse one too large or not JSON.
UNAUTHORIZED = _error("An invalid token; or not signed in where that is required.")
BODY_ERRORS = {
    413: _error("The request body is over DATA_UPLOAD_MAX_MEMORY_SIZE."),
    415: _error("A request body that is not application/json."),
}
NO_SUCH_ROOM = _error("No such room, or a private room the caller cannot read.")
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    int,
    OpenApiParameter.HEADER,
    description="Whole seconds to wait, rounded up; also retry_after_ms.",
    response=[429, 503],
)


def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema, where an empty value counts as absent."""
    return {"anyOf": [schema, {"type": "string", "enum": [""]}]}


SEQ_SCHEMA = _or_empty({"type": "integer", "minimum": 0, "maximum": protocol.MAX_INT})


class SendThrottle(BaseThrottle):
    """The ``send`` budget of the WebSocket protocol, per user (per client
    address when anonymous), shared with the user's sockets on every
    instance through ``core.limits``; a refusal is 429 with Retry-After."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        self.waited = limits.take(
            "send",
            limits.owner(request.user, clientaddr.from_request(request._request)),
            settings.SEND_RATE_PER_SECOND,
            settings.SEND_BURST,
        )
        return not self.waited

    def wait(self) -> float:
        return self.waited


def _visible_room_or_404(request: Request, slug: str) -> Room:
    room = access.readable_room(request.user, slug)
    if room is None:
        raise Http404("No such room.")
    return room


def _rooms_page_params(request: Request) -> tuple[int, str | None]:
    """``limit`` and the ``after`` cursor of a room-list request."""
    errors = {}
    limit = ROOMS_PAGE_DEFAULT
    text = request.query_params.get("limit") or ""
    if text:
        if text.isdigit() and 1 <= int(text) <= ROOMS_PAGE_MAX:
            limit = int(text)
        else:
            errors["limit"] = [
                f"'limit' must be a whole number in 1..{ROOMS_PAGE_MAX}."
            ]
    after = request.query_params.get("after") or None
    if after is not None and not re.fullmatch(SLUG_PATTERN, after):
        errors["after"] = ["'after' must be a room slug."]
    if errors:
        raise ValidationError(errors)
    return limit, after


def _next_link(request: Request, limit: int, after: str) -> str:
    query = urlencode({"after": after, "limit": limit})
    return f'<{request.build_absolute_uri(request.path)}?{query}>; rel="next"'


def _seq_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        return protocol.parse_seq_text(name, value)
    except protocol.ProtocolError as exc:
        raise ValidationError({name: [exc.detail]}) from None


def _limit_param(request: Request) -> int:
    try:
        return protocol.validate_limit(_seq_param(request, "limit"))
    except protocol.ProtocolError as exc:
        raise ValidationError({"limit": [exc.detail]}) from None


class TokenView(APIView):
    """Exchange a username and password for an API token, or revoke it."""

    @extend_schema(
        request=TokenRequestSerializer,
        parameters=[RETRY_AFTER],
        responses={
            200: TokenSerializer,
            400: _error("Wrong credentials, an inactive user, or invalid input."),
            401: UNAUTHORIZED,
            429: _refusal("Too many sign-in attempts or password checks."),
            503: _refusal("Every password-hashing slot is busy."),
            **BODY_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        refusal = throttling.check_attempt(request._request)
        if refusal is not None:
            return refusal_response(refusal)
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        username = data.validated_data["username"]
        refusal = throttling.check_password_check(request._request, username)
        if refusal is not None:
            return refusal_response(refusal)
        try:
            with throttling.password_hashing():
                user = authenticate(
                    request._request,
                    username=username,
                    password=data.validated_data["password"],
                )
        except throttling.Busy as exc:
            return refusal_response(exc.refusal)
        if user is None:
            return Response(
                {"detail": "Unable to sign in with those credentials."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response({"token": services.issue_token(user)})

    # The view answers anonymous callers itself, where drf-spectacular looks
    # for a permission class.
    @extend_schema(
        request=None, auth=SIGNED_IN, responses={204: None, 401: UNAUTHORIZED}
    )
    def delete(self, request: Request) -> Response:
        if not access.is_signed_in(request.user):
            return Response(
                {"detail": "Authentication credentials were not provided."},
                status=status.HTTP_401_UNAUTHORIZED,
            )
        # Each deletion closes that token's sockets (core.signals).
        services.revoke_tokens(user_id=request.user.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RoomListView(APIView):
    """List the rooms the caller can see; create a room (signed in)."""

    def get_permissions(self) -> list[Any]:
        if self.request.method == "POST":
            return [SignedIn()]
        # AllowAny rather than none, so the document says anyone may list.
        return [AllowAny()]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "limit",
                _or_empty({"type": "integer", "minimum": 1, "maximum": ROOMS_PAGE_MAX}),
                description=f"1-{ROOMS_PAGE_MAX}, default 100",
            ),
            OpenApiParameter(
                "after",
                _or_empty({"type": "string", "pattern": f"^{SLUG_PATTERN}$"}),
                description="Only rooms after this slug",
            ),
        ],
        responses={
            200: RoomSerializer(many=True),
            400: _error("A bad limit or after."),
            401: UNAUTHORIZED,
        },
    )
    def get(self, request: Request) -> Response:
        """A page of rooms by slug; a ``Link`` header names the next one."""
        limit, after = _rooms_page_params(request)
        rooms = access.visible_rooms(request.user).order_by("slug")
        if after is not None:
            rooms = rooms.filter(slug__gt=after)
        page = list(rooms[: limit + 1])
        response = Response(RoomSerializer(page[:limit], many=True).data)
        if len(page) > limit:
            response["Link"] = _next_link(request, limit, page[limit - 1].slug)
        return response

    @extend_schema(
        request=RoomCreateSerializer,
        parameters=[RETRY_AFTER],
        responses={
            201: RoomSerializer,
            400: _error("Invalid input, a taken slug, or no slug from the name."),
            401: UNAUTHORIZED,
            429: _refusal("Too many rooms created."),
            **BODY_ERRORS,
        },
    )
    def post(self, request: "SignedInRequest") -> Response:
        data = RoomCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # Every valid attempt counts, refused ones too: a taken slug answers
        # whether a room exists, and this bounds how fast anyone can ask.
        refusal = throttling.check_write("rooms.create", request.user)
        if refusal is not None:
            return refusal_response(refusal)
        try:
            room = services.create_room(owner=request.user, **data.validated_data)
        except services.SlugTaken as exc:
            raise ValidationError({"slug": [f"The slug {exc} is taken."]}) from None
        except services.InvalidRoomName:
            raise ValidationError(
                {"slug": ["No slug can be made from this name; give one."]}
            ) from None
        return Response(RoomSerializer(room).data, status=status.HTTP_201_CREATED)


class RoomDetailView(APIView):
    """One room the caller can see; its owner renames it."""

    def get_permissions(self) -> list[Any]:
        if self.request.method == "GET":
            return [AllowAny()]
        return [SignedIn()]

    @extend_schema(
        responses={200: RoomSerializer, 401: UNAUTHORIZED, 404: NO_SUCH_ROOM}
    )
    def get(self, request: Request, slug: str) -> Response:
        return Response(RoomSerializer(_visible_room_or_404(request, slug)).data)

    @extend_schema(
        request=RoomRenameSerializer,
        responses={
            200: RoomSerializer,
            400: _error("A missing, blank or too long name, or not a string."),
            401: UNAUTHORIZED,
            403: _error("Not the room's owner."),
            404: NO_SUCH_ROOM,
            **BODY_ERRORS,
        },
    )
    def patch(self, request: "SignedInRequest", slug: str) -> Response:
        """Rename the room (its slug stays); its connections hear of it."""
        room = _visible_room_or_404(request, slug)
        data = RoomRenameSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            services.rename_room(
                room=room, actor=request.user, name=data.validated_data["name"]
            )
        except services.AccessDenied:
            return Response(
                {"detail": "Only the room's owner renames it."},
                status=status.HTTP_403_FORBIDDEN,
            )
        except Room.DoesNotExist:
            raise Http404("No such room.") from None
        return Response(RoomSerializer(room).data)


class MemberListView(APIView):
    """A private room's members, for them; the owner adds a member."""

    def get_permissions(self) -> list[Any]:
        if self.request.method == "GET":
            return [AllowAny()]
        return [SignedIn()]

    @extend_schema(
        responses={
            200: MemberListSerializer(many=True),
            401: UNAUTHORIZED,
            404: NO_SUCH_ROOM,
        },
    )
    def get(self, request: Request, slug: str) -> Response:
        """The members by username, the owner marked; ``[]`` for a public
        room, which admits everyone."""
        room = _visible_room_or_404(request, slug)  # a private one: a member
        return Response(services.members(room))

    @extend_schema(
        request=MemberSerializer,
        parameters=[RETRY_AFTER],
        responses={
            201: MemberSerializer,
            400: _error("No such active user, or invalid input."),
            401: UNAUTHORIZED,
            403: _error("Not the owner, or a public room."),
            404: NO_SUCH_ROOM,
            409: _error("The room is full (ROOM_MEMBERS_MAX members)."),
            429: _refusal("Too many members added."),
            **BODY_ERRORS,
        },
    )
    def post(self, request: "SignedInRequest", slug: str) -> Response:
        room = _visible_room_or_404(request, slug)
        data = MemberSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        username = data.validated_data["username"]
        refusal = throttling.check_write("members.add", request.user)
        if refusal is not None:
            return refusal_response(refusal)
        try:
            services.add_member(room=room, actor=request.user, username=username)
        except services.AccessDenied:
            return Response(
                {"detail": "Only the owner of a private room adds members."},
                status=status.HTTP_403_FORBIDDEN,
            )
        except services.UnknownUser:
            raise ValidationError({"username": ["No such user."]}) from None
        except services.RoomFull as full:
            return Response({"detail": str(full)}, status=status.HTTP_409_CONFLICT)
        return Response({"username": username}, status=status.HTTP_201_CREATED)


class MemberDetailView(APIView):
    """The owner removes a member, or a member leaves."""

    permission_classes = [SignedIn]

    @extend_schema(
        responses={
            204: None,
            401: UNAUTHORIZED,
            403: _error("Not the owner, the owner leaving, or a public room."),
            404: _error("No such room, or no such member."),
        },
    )
    def delete(self, request: Request, slug: str, username: str) -> Response:
        room = _visible_room_or_404(request, slug)
        try:
            services.remove_member(room=room, actor=request.user, username=username)
        except services.AccessDenied:
            return Response(
                {"detail": "Only the owner removes members; owners cannot leave."},
                status=status.HTTP_403_FORBIDDEN,
            )
        except services.UnknownUser:
            raise Http404("No such member.") from None
        return Response(status=status.HTTP_204_NO_CONTENT)


def _prefix_param(request: Request) -> str:
    prefix = request.query_params.get("prefix") or ""
    if not 1 <= len(prefix) <= services.USERNAME_MAX:
        raise ValidationError(
            {"prefix": [f"Give 'prefix': 1-{services.USERNAME_MAX} characters."]}
        )
    return prefix


class UserLookupView(APIView):
    """Active usernames by prefix, for adding members as a name is typed."""

    permission_classes = [SignedIn]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "prefix",
                {"type": "string", "minLength": 1, "maxLength": services.USERNAME_MAX},
                required=True,
                description="The start of a username, whatever the case",
            ),
            RETRY_AFTER,
        ],
        responses={
            200: UsernameSerializer(many=True),
            400: _error("No prefix, or one over 150 characters."),
            401: UNAUTHORIZED,
            429: _refusal("Too many lookups."),
        },
    )
    def get(self, request: "SignedInRequest") -> Response:
        """Up to 10 usernames, sorted; bad input takes no token."""
        prefix = _prefix_param(request)
        refusal = throttling.check_user_lookup(request.user)
        if refusal is not None:
            return refusal_response(refusal)
        names = services.usernames_starting_with(prefix)
        return Response([{"username": name} for name in names])


class MessageListView(APIView):
    """Read a page of a room's messages, or post one."""

    def get_throttles(self) -> list[Any]:
        if self.request.method == "POST":
            return [SendThrottle()]
        return []

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "after", SEQ_SCHEMA, description="Only messages above this seq"
            ),
            OpenApiParameter(
                "before", SEQ_SCHEMA, description="Only messages below this seq"
            ),
            OpenApiParameter(
                "limit",
                _or_empty(
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": protocol.HISTORY_MAX_LIMIT,
                    }
                ),
                description=f"1-{protocol.HISTORY_MAX_LIMIT}, default 50",
            ),
        ],
        responses={
            200: MessagePageSerializer,
            400: _error("A bad after, before or limit."),
            401: UNAUTHORIZED,
            404: NO_SUCH_ROOM,
        },
    )
    def get(self, request: Request, slug: str) -> Response:
        room = _visible_room_or_404(request, slug)
        after = _seq_param(request, "after")
        before = _seq_param(request, "before")
        limit = _limit_param(request)
        messages, has_more = services.history(
            room=room, before=before, after=after, limit=limit
        )
        return Response({"messages": messages, "has_more": has_more})

    # Anonymous callers get 401 from the view itself (after the 404 of a room
    # they cannot read), where drf-spectacular looks for a permission class.
    @extend_schema(
        request=MessageCreateSerializer,
        auth=SIGNED_IN,
        parameters=[RETRY_AFTER],
        responses={
            201: MessageSerializer,
            200: MessageSerializer,
            400: _error("An invalid body or client_id."),
            401: UNAUTHORIZED,
            404: NO_SUCH_ROOM,
            429: _refusal("Too many messages sent."),
            **BODY_ERRORS,
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        room = _visible_room_or_404(request, slug)
        if not access.is_signed_in(request.user):
            return Response(
                {"detail": "Sign in to post messages."},
                status=status.HTTP_401_UNAUTHORIZED,
            )
        data = MessageCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            result = services.post_message_sync(
                room=room, author=request.user, **data.validated_data
            )
        except services.AccessDenied:
            raise Http404("No such room.") from None
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        return Response(result.message, status=code)


class TypingView(APIView):
    """Say that the caller is typing: the WebSocket's ``typing`` frame, for
    clients that read the room over Server-Sent Events."""

    @extend_schema(
        request=None,
        auth=SIGNED_IN,
        responses={
            202: OpenApiResponse(description="Relayed, or dropped as excess."),
            401: UNAUTHORIZED,
            404: NO_SUCH_ROOM,
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        # Anonymous callers first: 401 whatever the slug, which tells them
        # nothing about the room (there is no read to answer).
        if not access.is_signed_in(request.user):
            return Response(
                {"detail": "Sign in to send typing notices."},
                status=status.HTTP_401_UNAUTHORIZED,
            )
        room = _visible_room_or_404(request, slug)
        # The socket's bucket: once per interval per user and room, across
        # sockets, streams and instances; the excess is dropped, as on a socket.
        interval = settings.TYPING_INTERVAL_SECONDS
        if interval > 0 and limits.take(
            "typing", limits.typing_owner(request.user.pk, room.pk), 1.0 / interval, 1
        ):
            return Response(status=status.HTTP_202_ACCEPTED)
        services.broadcast_typing_sync(
            room_id=room.pk,
            user=request.user.get_username(),
            sender=f"http:{request.user.pk}",  # no socket to spare the echo
        )
        return Response(status=status.HTTP_202_ACCEPTED)


MESSAGE_SEQ = OpenApiParameter(
    "seq", int, OpenApiParameter.PATH, description="The message's seq"
)


def _change(
    request: Request, slug: str, seq: int, serializer: type[serializers.Serializer[Any]]
) -> Response:
    """Edit or delete message ``seq`` (``serializer`` has a body for an
    edit, none for a deletion): 200 with the change."""
    room = _visible_room_or_404(request, slug)
    if not access.is_signed_in(request.user):
        return Response(
            {"detail": "Sign in to edit or delete messages."},
            status=status.HTTP_401_UNAUTHORIZED,
        )
    data = serializer(data=request.data)
    data.is_valid(raise_exception=True)
    body = data.validated_data.get("body")
    not_found = f"No message {seq} in this room (or it was deleted)."
    if seq > protocol.MAX_INT:  # past any seq, and past what the column holds
        raise Http404(not_found)
    try:
        result = services.change_message_sync(
            room=room,
            actor=request.user,
            seq=seq,
            body=body,
            client_id=data.validated_data["client_id"],
        )
    except services.MessageNotFound:
        raise Http404(not_found) from None
    except (services.AccessDenied, Room.DoesNotExist):
        verb = "edit" if body is not None else "delete"
        return Response(
            {"detail": f"You may not {verb} message {seq}."},
            status=status.HTTP_403_FORBIDDEN,
        )
    return Response(result.message)


class MessageDetailView(APIView):
    """Edit or delete one message; each change is a room event of its own."""

    def get_throttles(self) -> list[Any]:
        return [SendThrottle()]

    @extend_schema(
        request=MessageCreateSerializer,
        auth=SIGNED_IN,
        parameters=[MESSAGE_SEQ, RETRY_AFTER],
        responses={
            200: MessageSerializer,
            400: _error("An invalid body or client_id."),
            401: UNAUTHORIZED,
            403: _error("Not the message's author."),
            404: _error("No such room, or no such message (or it was deleted)."),
            429: _refusal("Too many messages sent."),
            **BODY_ERRORS,
        },
    )
    def patch(self, request: Request, slug: str, seq: int) -> Response:
        return _change(request, slug, seq, MessageCreateSerializer)

    @extend_schema(
        request=MessageDeleteSerializer,
        auth=SIGNED_IN,
        parameters=[MESSAGE_SEQ, RETRY_AFTER],
        responses={
            200: MessageSerializer,
            400: _error("An invalid client_id."),
            401: UNAUTHORIZED,
            403: _error("Not the author, the room's owner or staff."),
            404: _error("No such room, or no such message (or it was deleted)."),
            429: _refusal("Too many messages sent."),
            **BODY_ERRORS,
        },
    )
    def delete(self, request: Request, slug: str, seq: int) -> Response:
        return _change(request, slug, seq, MessageDeleteSerializer)


class DeletionListView(APIView):
    """Who deleted which message of a room, and when: owners and staff."""

    permission_classes = [SignedIn]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "before", SEQ_SCHEMA, description="Only deletions below this seq"
            ),
            OpenApiParameter(
                "limit",
                _or_empty(
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": protocol.HISTORY_MAX_LIMIT,
                    }
                ),
                description=f"1-{protocol.HISTORY_MAX_LIMIT}, default 50",
            ),
        ],
        responses={
            200: DeletionPageSerializer,
            400: _error("A bad before or limit."),
            401: UNAUTHORIZED,
            403: _error("Not the room's owner or staff."),
            404: NO_SUCH_ROOM,
        },
    )
    def get(self, request: Request, slug: str) -> Response:
        room = _visible_room_or_404(request, slug)
        if not access.can_audit(request.user, room):  # before saying more
            return Response(
                {"detail": "Only the room's owner and staff see its deletions."},
                status=status.HTTP_403_FORBIDDEN,
            )
        page, has_more = services.deletions(
            room=room,
            actor=request.user,
            before=_seq_param(request, "before"),
            limit=_limit_param(request),
        )
        return Response({"deletions": page, "has_more": has_more})


def _search_params(request: Request) -> tuple[list[str], str | None, int, int]:
    """The words, room slug, page and limit of a search request; 400 for
    any that is bad (before the search spends the caller's budget)."""
    errors = {}
    words: list[str] = []
    try:
        words = services.search_words(request.query_params.get("q") or "")
    except services.InvalidSearch as exc:
        errors["q"] = [str(exc)]
    room = request.query_params.get("room") or None
    if room is not None and not re.fullmatch(SLUG_PATTERN, room):
        errors["room"] = ["'room' must be a room slug."]
    numbers = {}
    for name, default, most in (
        ("page", 1, services.SEARCH_MAX_PAGE),
        ("limit", services.SEARCH_PAGE_DEFAULT, services.SEARCH_PAGE_MAX),
    ):
        text = request.query_params.get(name) or ""
        numbers[name] = default
        if text:
            if text.isascii() and text.isdigit() and 1 <= int(text) <= most:
                numbers[name] = int(text)
            else:
                errors[name] = [f"'{name}' must be a whole number in 1..{most}."]
    if errors:
        raise ValidationError(errors)
    return words, room, numbers["page"], numbers["limit"]


class SearchView(APIView):
    """Messages of the rooms the caller may read, best match first."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "q",
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": services.SEARCH_MAX_CHARS,
                },
                required=True,
                description=(
                    f"1-{services.SEARCH_MAX_WORDS} words; a message matches "
                    "when each is the start of one of its words"
                ),
            ),
            OpenApiParameter(
                "room",
                _or_empty({"type": "string", "pattern": f"^{SLUG_PATTERN}$"}),
                description="Only this room's messages",
            ),
            OpenApiParameter(
                "page",
                _or_empty(
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": services.SEARCH_MAX_PAGE,
                    }
                ),
                description=f"1-{services.SEARCH_MAX_PAGE}, default 1",
            ),
            OpenApiParameter(
                "limit",
                _or_empty(
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": services.SEARCH_PAGE_MAX,
                    }
                ),
                description=f"1-{services.SEARCH_PAGE_MAX}, default 20",
            ),
            RETRY_AFTER,
        ],
        responses={
            200: SearchPageSerializer,
            400: _error(
                "No word to search for, too many, or a bad room, page or limit."
            ),
            401: UNAUTHORIZED,
            404: NO_SUCH_ROOM,
            429: _refusal("Too many searches."),
        },
    )
    def get(self, request: Request) -> Response:
        """A page of matches; a ``Link`` header names the next one."""
        words, slug, page, limit = _search_params(request)
        refusal = throttling.check_search(request._request, request.user)
        if refusal is not None:
            return refusal_response(refusal)
        room = _visible_room_or_404(request, slug) if slug is not None else None
        hits, has_more = services.search(
            user=request.user, words=words, room=room, page=page, limit=limit
        )
        response = Response({"results": hits, "has_more": has_more})
        if has_more:
            query = {"q": request.query_params["q"], "page": page + 1, "limit": limit}
            if slug is not None:
                query["room"] = slug
            url = request.build_absolute_uri(request.path)
            response["Link"] = f'<{url}?{urlencode(query)}>; rel="next"'
        return response


# --- read positions (docs/protocol.md, section 18) ------------------------------


class ReadStateSerializer(serializers.Serializer[Any]):
    """The caller's read position in a room, with its counts (at most 999:
    "999" means 999 or more)."""

    room = serializers.CharField()
    read_seq = serializers.IntegerField(min_value=0)
    unread = serializers.IntegerField(min_value=0, max_value=reads.COUNT_CAP)
    mentions = serializers.IntegerField(min_value=0, max_value=reads.COUNT_CAP)


@extend_schema_field({"type": "integer", "minimum": 0, "maximum": protocol.MAX_INT})
class SeqField(serializers.Field[int, object, int, int]):
    """A seq under the WebSocket rules: a JSON integer in 0..2^63-1, never a
    boolean, a float or a string."""

    def to_internal_value(self, data: object) -> int:
        if data is None:
            raise serializers.ValidationError("This field may not be null.")
        try:
            seq = protocol.validate_seq("seq", data)
        except protocol.ProtocolError as exc:
            raise serializers.ValidationError(exc.detail, code=exc.code) from None
        return cast("int", seq)

    def to_representation(self, value: int) -> int:
        return value


class ReadMoveSerializer(serializers.Serializer[Any]):
    seq = SeqField()


class ReadView(APIView):
    """The caller's read position in a room: read it, or move it forward."""

    @extend_schema(
        auth=SIGNED_IN,
        responses={200: ReadStateSerializer, 401: UNAUTHORIZED, 404: NO_SUCH_ROOM},
    )
    def get(self, request: Request, slug: str) -> Response:
        user = _reader_or_none(request)
        if user is None:
            return _sign_in_to_read()
        room = _visible_room_or_404(request, slug)
        return Response(reads.room_state(user, room).as_dict())

    @extend_schema(
        request=ReadMoveSerializer,
        auth=SIGNED_IN,
        parameters=[RETRY_AFTER],
        responses={
            200: ReadStateSerializer,
            400: _error("seq is missing, or not an integer in 0..2^63-1."),
            401: UNAUTHORIZED,
            404: NO_SUCH_ROOM,
            429: _refusal("Too many read positions moved."),
            **BODY_ERRORS,
        },
    )
    def put(self, request: Request, slug: str) -> Response:
        """Move the position forward (never back; past the room's last
        seq it stops there); every watching connection of the caller hears."""
        user = _reader_or_none(request)
        if user is None:
            return _sign_in_to_read()
        room = _visible_room_or_404(request, slug)
        data = ReadMoveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        refusal = throttling.check_read(request._request, user)
        if refusal is not None:
            return refusal_response(refusal)
        try:
            result = services.mark_read_sync(
                user=user, room=room, seq=data.validated_data["seq"]
            )
        except (services.AccessDenied, Room.DoesNotExist):
            raise Http404("No such room.") from None
        return Response(result.state.as_dict())


def _reader_or_none(request: Request) -> "AuthUser | None":
    # Anonymous callers first: 401 whatever the slug (it tells them nothing).
    return request.user if access.is_signed_in(request.user) else None


def _sign_in_to_read() -> Response:
    return Response(
        {"detail": "Sign in to keep read positions."},
        status=status.HTTP_401_UNAUTHORIZED,
    )
