"""The Django admin: rooms, memberships, messages and API tokens.

Staff write through the same services as the API, under the same rules, and
the same events go out: a room made private or deleted closes the
connections that lost access, a removed member's connections close with
4403, and a deleted token stops working and closes what it signed in
(``core.signals`` publishes after the commit, whatever the path).
Messages are read-only (``MessageAdmin`` says why); deletions are listed
for staff, as the audit of who deleted what (``DeletionAdmin``). docs/deploy.md tells
staff what they can do here and how to create the first staff account.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from core import access, services
from core.models import ApiToken, Deletion, Membership, Message, Room

# Django's admin and form classes take no type arguments at run time; the
# checker gets the model-typed bases.
if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups

    _RoomForm = forms.ModelForm[Room]
    _MembershipForm = forms.ModelForm[Membership]
    _RoomAdmin = admin.ModelAdmin[Room]
    _MembershipAdmin = admin.ModelAdmin[Membership]
    # Shared by Message's admin and its Deletion proxy's.
    _ReadOnlyAdmin = admin.ModelAdmin[Any]
else:
    _RoomForm = _MembershipForm = forms.ModelForm
    _RoomAdmin = _MembershipAdmin = _ReadOnlyAdmin = admin.ModelAdmin

# What ``ModelAdmin.get_deleted_objects`` returns: the rows to list, counts
# by model, what the user may not delete, what is protected.
DeletedObjects = tuple[list[Any], dict[str, int], set[str], list[Any]]

# --- rooms ----------------------------------------------------------------------


class RoomAdminForm(_RoomForm):
    """A room under the API's rules: the model's validators check the slug
    and the name; a slug left empty is made from the name, as the API does.
    """

    class Meta:
        model = Room
        fields = ["name", "slug", "is_private", "owner"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "slug" in self.fields:  # a new room; RoomAdmin fixes it after
            self.fields["slug"].required = False
            self.fields["slug"].help_text = (
                "Optional; made from the name when left empty. It cannot be "
                "changed once the room exists."
            )

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean()  # type: ignore[assignment]  # ModelForm's returns cleaned_data
        if "slug" in self.fields and not cleaned.get("slug") and cleaned.get("name"):
            try:
                cleaned["slug"] = services.slug_from_name(cleaned["name"])
            except services.InvalidRoomName:
                self.add_error("slug", "No slug can be made from this name; give one.")
        owner = cleaned.get("owner")
        if "owner" in self.changed_data and owner is not None and not owner.is_active:
            self.add_error("owner", "Choose an active user.")
        return cleaned


@admin.register(Room)
class RoomAdmin(_RoomAdmin):
    """Rooms: create, rename, change privacy or owner, delete."""

    form = RoomAdminForm
    list_display = ["slug", "name", "is_private", "owner", "last_seq", "created_at"]
    list_filter = ["is_private"]
    list_select_related = ["owner"]
    search_fields = ["slug", "name", "owner__username"]
    raw_id_fields = ["owner"]

    def get_fields(
        self, request: HttpRequest, obj: Room | None = None
    ) -> "_FieldGroups":
        if obj is None:
            return ["name", "slug", "is_private", "owner"]
        return [*self.get_readonly_fields(request, obj), "name", "is_private", "owner"]

    def get_readonly_fields(
        self, request: HttpRequest, obj: Room | None = None
    ) -> list[str]:
        if obj is None:
            return []
        # The slug is fixed, as in the API: clients' URLs and open
        # connections name the room by it, and a member's removal finds
        # their connections by it. Only a stored message moves last_seq.
        return ["slug", "last_seq", "last_message_at", "created_at"]

    def save_model(
        self, request: HttpRequest, obj: Room, form: "_RoomForm", change: bool
    ) -> None:
        """Save through ``services.save_room``: the owner stays a member."""
        services.save_room(obj)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The form again when another request took the slug after this
        form checked it: its check now says so beside the field."""
        for _ in range(2):
            try:
                return super().changeform_view(
                    request, object_id, form_url, extra_context
                )
            except services.SlugTaken as exc:
                taken = exc
        self.message_user(
            request, f"The slug {taken} was taken meanwhile.", messages.ERROR
        )
        return HttpResponseRedirect(request.get_full_path())

    def get_deleted_objects(
        self, objs: Iterable[Room], request: HttpRequest
    ) -> DeletedObjects:
        """What deleting rooms takes with it, counted rather than listed.

        Django would list every message, and a room may hold millions.
        They go with their room, the whole sequence at once, so no client
        resumes into a gap; Django's own check would refuse it, because
        ``MessageAdmin`` refuses deleting messages one by one.
        """
        rooms = list(objs)
        ids = [room.pk for room in rooms]
        counts = {
            str(Room._meta.verbose_name_plural): len(rooms),
            str(Membership._meta.verbose_name_plural): Membership.objects.filter(
                room_id__in=ids
            ).count(),
            str(Message._meta.verbose_name_plural): Message.objects.filter(
                room_id__in=ids
            ).count(),
        }
        denied = {
            str(Room._meta.verbose_name)
            for room in rooms
            if not self.has_delete_permission(request, room)
        }
        listed = [f"Room: {room.slug} ({room.name})" for room in rooms]
        return listed, {k: n for k, n in counts.items() if n}, denied, []

    def delete_model(self, request: HttpRequest, obj: Room) -> None:
        """Delete through ``services.delete_rooms``, where every write is."""
        services.delete_rooms(Room.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        services.delete_rooms(queryset)


# --- memberships ----------------------------------------------------------------


class MembershipForm(_MembershipForm):
    """A new member, under ``services.check_admission``'s rules."""

    class Meta:
        model = Membership
        fields = ["room", "user"]

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean()  # type: ignore[assignment]  # ModelForm's returns cleaned_data
        room, user = cleaned.get("room"), cleaned.get("user")
        if room is None or user is None:
            return cleaned
        try:
            services.check_admission(room=room, user=user)
            services.check_room_has_space(room)
        except services.RoomFull as full:
            self.add_error("room", str(full))
        except services.UnknownUser:
            self.add_error("user", "Choose an active user.")
        except services.AccessDenied:
            self.add_error(
                "room",
                "A public room admits everyone; only private rooms have members.",
            )
        return cleaned


@admin.register(Membership)
class MembershipAdmin(_MembershipAdmin):
    """Members of private rooms: add and remove; nothing to change.

    Moving a membership to another room or user would be a removal and an
    addition, so it is done as those two.
    """

    form = MembershipForm
    list_display = ["room", "user", "joined_at"]
    list_filter = ["room__is_private"]
    list_select_related = ["room", "user"]
    search_fields = ["=room__slug", "=user__username"]
    search_help_text = "A room's slug or a username (exact)"
    raw_id_fields = ["room", "user"]

    def has_change_permission(
        self, request: HttpRequest, obj: Membership | None = None
    ) -> bool:
        return False

    def save_model(
        self,
        request: HttpRequest,
        obj: Membership,
        form: "_MembershipForm",
        change: bool,
    ) -> None:
        """Admit through ``services.admit_member``, as the API's add does."""
        # The admin goes on with ``obj``: its log entry, the redirect.
        obj.pk = services.admit_member(room=obj.room, user=obj.user).pk

    def get_deleted_objects(
        self, objs: Iterable[Membership], request: HttpRequest
    ) -> DeletedObjects:
        """Django's list, refused where ``access.can_end_membership`` says no.

        Checked here, not in ``has_delete_permission``: Django asks that for
        every membership a user's or a room's deletion takes with it, and
        those must still go.
        """
        memberships = list(objs)
        listed, counts, denied, protected = super().get_deleted_objects(
            memberships, request
        )
        if not all(access.can_end_membership(m) for m in memberships):
            denied = {*denied, "a public room's memberships, or an owner's own"}
        return listed, counts, denied, protected

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        """Remove through ``services.end_membership``, as the API does."""
        services.end_membership(membership=obj)

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[Membership]
    ) -> None:
        with transaction.atomic():
            for membership in queryset:
                services.end_membership(membership=membership)


# --- messages -------------------------------------------------------------------


class ReadOnlyAdmin(_ReadOnlyAdmin):
    """Rows to read: no adding, changing or deleting in the admin."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    """Messages, to read: no adding, changing or deleting here.

    Clients resume a room by ``seq``, which has no gaps (docs/protocol.md
    section 9.1): a row deleted here would be a hole that clients cannot
    tell from a lost one, and a change made here would never reach those
    who hold the old text. Edits and deletions go through
    ``services.store_change`` (the room page, the WebSocket, the API),
    which orders them as room events; a room's messages go only with the
    room.
    """

    list_display = ["room", "seq", "author_name", "sent_at", "state", "excerpt"]
    list_select_related = ["room"]
    search_fields = ["=room__slug", "=author_name"]
    search_help_text = "A room's slug or an author's username (exact)"
    list_filter = ["kind", "deleted"]
    fields = [
        "room",
        "seq",
        "kind",
        "target_seq",
        "author",
        "author_name",
        "sent_at",
        "edited_at",
        "deleted",
        "client_id",
        "body",
    ]
    # Newest first, by the primary key: the default order (room, seq) would
    # join and sort the whole table.
    ordering = ["-id"]
    show_full_result_count = False

    @admin.display(description="body")
    def excerpt(self, obj: Message) -> str:
        return obj.body if len(obj.body) <= 80 else obj.body[:79] + "…"

    @admin.display(description="state")
    def state(self, obj: Message) -> str:
        if obj.kind != Message.Kind.MESSAGE:
            noun = "edit" if obj.kind == Message.Kind.EDIT else "deletion"
            return f"{noun} of #{obj.target_seq}"
        if obj.deleted:
            return "deleted"
        return "edited" if obj.edited_at is not None else "message"


@admin.register(Deletion)
class DeletionAdmin(ReadOnlyAdmin):
    """Who deleted which message, and when: the audit, to read.

    The deleted body is not kept anywhere, so it is not shown.
    """

    list_display = ["room", "deleted_message", "deleted_by", "deleted_at"]
    list_select_related = ["room"]
    search_fields = ["=room__slug", "=author_name"]
    search_help_text = "A room's slug or who deleted (exact username)"
    fields = ["room", "seq", "target_seq", "author", "author_name", "sent_at"]
    ordering = ["-id"]
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Deletion]:
        return super().get_queryset(request).filter(kind=Message.Kind.DELETE)

    @admin.display(description="message", ordering="target_seq")
    def deleted_message(self, obj: Deletion) -> str:
        return f"#{obj.target_seq}"

    @admin.display(description="deleted by", ordering="author_name")
    def deleted_by(self, obj: Deletion) -> str:
        return obj.author_name

    @admin.display(description="deleted at", ordering="sent_at")
    def deleted_at(self, obj: Deletion) -> Any:
        return obj.sent_at


# --- API tokens -----------------------------------------------------------------

# DRF's own admin shows each key; ours lists tokens by their user only.
admin.site.unregister(TokenProxy)


@admin.register(ApiToken)
class ApiTokenAdmin(TokenAdmin):
    """API tokens: list and revoke (delete); keys are never shown.

    A deleted token stops working at once (every request and handshake
    reads it from the database) and closes the connections it signed in.
    No adding: a key made here would be shown to staff; users get theirs
    from ``POST /api/auth/token/``.
    """

    list_display = ["user", "created"]
    list_select_related = ["user"]
    fields = ["user", "created"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: ApiToken | None = None
    ) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        """Revoke through ``services.delete_tokens``, where every write is."""
        services.delete_tokens(ApiToken.objects.filter(key=obj.key))

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[ApiToken]
    ) -> None:
        services.delete_tokens(queryset)
