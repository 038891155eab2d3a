"""Rooms, memberships and messages; API tokens as the admin shows them."""

from typing import TYPE_CHECKING

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from rest_framework.authtoken.models import TokenProxy

if TYPE_CHECKING:
    from django.contrib.auth.models import User

SLUG_PATTERN = r"[a-z0-9][a-z0-9-]{0,49}"
slug_validator = RegexValidator(
    rf"^{SLUG_PATTERN}\Z",
    "Use 1-50 lowercase letters, digits or hyphens, starting with a letter or digit.",
)


class Room(models.Model):
    """A place where messages are posted; ``last_seq`` numbers them."""

    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    is_private = models.BooleanField(default=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_rooms",
    )
    # The seq of the newest message; the next one takes last_seq + 1 while the
    # row is locked, which keeps seq gap-free and unique per room.
    last_seq = models.PositiveBigIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # A string: ManyToManyField is not subscriptable at run time.
    members: "models.ManyToManyField[User, Membership]" = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="rooms"
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    """A user admitted to a (private) room."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="unique_membership")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.room_id}"


class Message(models.Model):
    """A room event with its own ``seq``: a message, or a change to one.

    Never hard-deleted, so ``seq`` has no holes. An edit or a deletion is a
    row of its own (``kind``) that names its ``target_seq`` and takes the
    room's next seq, so resuming, history and gap filling carry changes as
    they carry messages; the target row holds the message's current state.
    An edit's text replaces the old one in the target and in its earlier
    edits, and a deletion erases it from all of them, so no replaced or
    deleted text is kept; the deletion row itself is the audit record (who,
    when, which seq; never the body).
    """

    class Kind(models.TextChoices):
        MESSAGE = "message"
        EDIT = "edit"
        DELETE = "delete"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.PositiveBigIntegerField()
    # SET_NULL keeps the message when its author's account goes; author_name
    # keeps the name. Both are empty for system messages (announce).
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    author_name = models.CharField(max_length=150, blank=True)
    body = models.TextField()
    # NULL, not "": the unique constraint must not treat absent ids as equal.
    client_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    sent_at = models.DateTimeField()
    # db_default: the raw INSERT of services.INSERT_WITH_NEXT_SEQ leaves them out.
    kind = models.CharField(
        max_length=8,
        choices=Kind.choices,
        default=Kind.MESSAGE,
        db_default=Kind.MESSAGE,
    )
    # The seq of the message an edit or deletion changes; NULL for a message.
    target_seq = models.PositiveBigIntegerField(null=True, blank=True)
    # A message's latest edit; NULL until it is edited.
    edited_at = models.DateTimeField(null=True, blank=True)
    # A tombstone (a deleted message, or an edit of one): its body is "".
    deleted = models.BooleanField(default=False, db_default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="unique_room_seq"),
            models.UniqueConstraint(
                fields=["room", "author", "client_id"],
                condition=Q(client_id__isnull=False),
                name="unique_room_author_client_id",
            ),
        ]
        indexes = [
            # A message's changes (a deletion wipes its edits), and a room's
            # deletions (the audit), without walking the room's messages.
            models.Index(
                fields=["room", "target_seq"],
                condition=Q(target_seq__isnull=False),
                name="message_changes_by_target",
            ),
            models.Index(
                fields=["room", "seq"],
                condition=Q(kind="delete"),
                name="message_deletions",
            ),
        ]
        ordering = ["room", "seq"]

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq}"


class Deletion(Message):
    """A room's deletions, as the admin lists them (the audit)."""

    class Meta:
        proxy = True


class ApiToken(TokenProxy):
    """DRF's API token, named by its user: the admin shows no key.

    DRF's ``Token.__str__`` is the key itself, which the admin would put in
    page titles, messages and its log (core/admin.py). ``TokenProxy`` gives
    the user's id as ``pk``, so no key reaches a URL either.
    """

    class Meta:
        proxy = True
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"API token of {self.user}"


class ReadPosition(models.Model):
    """How far a user has read a room: messages above ``seq`` are unread.

    Only ever moves forward (``core.services.mark_read``). No row yet means
    the user has not marked the room read: what was sent after they joined
    counts as unread (``core.reads``).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "room"], name="unique_read_position"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user_id} read {self.room_id} to {self.seq}"
