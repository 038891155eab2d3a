"""Access changes that must cut live connections off (close 4403).

Every path that removes access publishes from here, so the admin, the
shell, the API and cascades all behave alike: Django sends per-object
delete signals for ``QuerySet.delete()`` and cascades once a receiver is
connected for the model. Each event is published after the change has
committed (``transaction.on_commit``), never before: a connection that
re-reads its access on the event must see the change.

``QuerySet.update()`` sends no signal; connections re-check their access
periodically for that (docs/protocol.md section 12).
"""

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.hashers import get_hasher, identify_hasher, is_password_usable
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.signals import user_logged_out
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.contrib.sessions.models import Session
from django.db import models, transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.http import HttpRequest
from rest_framework.authtoken.models import Token

from core import services
from core.models import Membership, Room

if TYPE_CHECKING:
    from django.contrib.auth.models import User as AuthUser

User = get_user_model()

# Set by pre_save on an instance whose save removes access; read by
# post_save, which publishes once the row is written.
LOST_ACCESS_ATTR = "_switchboard_lost_access"


def _after_commit(publish: Callable[[], None]) -> None:
    """Run ``publish`` once the current transaction commits (now if none)."""
    transaction.on_commit(publish)


def _deleted_with(origin: object, model: type[models.Model]) -> bool:
    """True if the delete that cascaded here started at ``model`` rows.

    ``origin`` is what ``delete()`` was called on: an instance or a queryset.
    """
    if isinstance(origin, models.QuerySet):
        return issubclass(origin.model, model)
    return isinstance(origin, model)


# --- deletions --------------------------------------------------------------


@receiver(post_delete, sender=Membership)
def close_sockets_of_deleted_membership(
    sender: type, instance: Membership, origin: object = None, **kwargs: Any
) -> None:
    """A membership removed by any path closes that user's sockets there.

    Skipped when the room or the user is being deleted: their own receivers
    publish one event that covers every membership.
    """
    if _deleted_with(origin, Room) or _deleted_with(origin, User):
        return
    user_id = instance.user_id
    room = Room.objects.filter(pk=instance.room_id).values_list("slug", flat=True)
    slug = room.first()  # present: deletes that cascade from it return above
    _after_commit(lambda: services.revoke_access(user_id=user_id, room=slug))


@receiver(post_delete, sender=Token)
def close_sockets_of_deleted_token(
    sender: type, instance: Token, origin: object = None, **kwargs: Any
) -> None:
    """A deleted API token closes the connections it signed in.

    DRF's admin proxy (``TokenProxy``) deletes through ``Token`` too.
    """
    if _deleted_with(origin, User):
        return  # the user's own receiver closes everything
    # Read now: the key is the primary key, which Django clears after this.
    user_id, credential = instance.user_id, services.credential_id(instance.key)
    _after_commit(
        lambda: services.revoke_access(user_id=user_id, credential=credential)
    )


@receiver(post_delete, sender=Session)
def close_sockets_of_deleted_session(
    sender: type, instance: Session, **kwargs: Any
) -> None:
    """A deleted session closes the connections it signed in.

    Covers logout (``flush``), ``clearsessions`` and the shell.
    An anonymous session signed nothing in.
    """
    user_key = instance.get_decoded().get(SESSION_KEY)
    if user_key is None:
        return
    user_id = User._meta.pk.to_python(user_key)
    credential = services.credential_id(instance.session_key)
    _after_commit(
        lambda: services.revoke_access(user_id=user_id, credential=credential)
    )


@receiver(post_delete, sender=User)
def close_sockets_of_deleted_user(
    sender: type, instance: AbstractBaseUser, **kwargs: Any
) -> None:
    """A deleted user's connections all close."""
    user_id = instance.pk  # cleared by Django after this receiver
    _after_commit(lambda: services.revoke_access(user_id=user_id))


@receiver(post_delete, sender=Room)
def recheck_deleted_room(sender: type, instance: Room, **kwargs: Any) -> None:
    """A deleted room's connections re-check their access and find it gone."""
    room_id = instance.pk
    _after_commit(lambda: services.recheck_access(room_id=room_id))


# --- changes ----------------------------------------------------------------


def _saves(update_fields: frozenset[str] | None, *names: str) -> bool:
    """True if this save writes any of the fields ``names``."""
    return update_fields is None or any(name in update_fields for name in names)


@receiver(pre_save, sender=Room)
def notice_room_made_private(
    sender: type,
    instance: Room,
    raw: bool = False,
    update_fields: frozenset[str] | None = None,
    **kwargs: Any,
) -> None:
    """Mark a save that turns a public room private, for post_save."""
    instance.__dict__.pop(LOST_ACCESS_ATTR, None)  # left by a failed save
    if raw or instance.pk is None or not instance.is_private:
        return
    if not _saves(update_fields, "is_private"):
        return
    was_private = (
        Room.objects.filter(pk=instance.pk).values_list("is_private", flat=True).first()
    )
    setattr(instance, LOST_ACCESS_ATTR, was_private is False)


@receiver(post_save, sender=Room)
def recheck_room_made_private(sender: type, instance: Room, **kwargs: Any) -> None:
    """A room made private: its connections re-check (non-members close).

    Published from post_save, not pre_save: outside a transaction
    ``on_commit`` runs at once, before the row would be written.
    """
    if not instance.__dict__.pop(LOST_ACCESS_ATTR, False):
        return
    room_id = instance.pk
    _after_commit(lambda: services.recheck_access(room_id=room_id))


def is_password_hash_upgrade(
    user: AbstractBaseUser,
    old_hash: str,
    update_fields: frozenset[str] | None,
) -> bool:
    """True if this save only re-hashes the same password (Django's upgrade).

    On login, ``check_password`` re-hashes a correct password whose hasher
    or work factor is outdated: its setter calls ``set_password`` (which
    keeps the raw password in ``_password``), drops ``_password`` again and
    saves ``update_fields=["password"]`` (django/contrib/auth/base_user.py).
    A real change keeps ``_password`` until the save;
    ``set_unusable_password`` and a hash assigned by hand never set it.
    Beyond that, the stored hash must be one Django would upgrade and the
    new one what it upgrades to, as ``hashers.verify_password`` decides.
    Anything else counts as a change: if Django changes how it upgrades,
    this fails closed (tests/unit/test_signals.py notices).
    """
    if update_fields != frozenset({"password"}):
        return False
    if "_password" not in vars(user) or user._password is not None:  # type: ignore[attr-defined]  # Django's private attribute, on purpose
        return False
    new_hash = user.password
    if not (is_password_usable(old_hash) and is_password_usable(new_hash)):
        return False
    preferred = get_hasher("default")
    try:
        old_hasher, new_hasher = identify_hasher(old_hash), identify_hasher(new_hash)
    except ValueError:
        return False
    if new_hasher.algorithm != preferred.algorithm or preferred.must_update(new_hash):
        return False
    return old_hasher.algorithm != preferred.algorithm or preferred.must_update(
        old_hash
    )


@receiver(pre_save, sender=User)
def notice_lost_password_or_activation(
    sender: "type[AuthUser]",
    instance: AbstractBaseUser,
    raw: bool = False,
    update_fields: frozenset[str] | None = None,
    **kwargs: Any,
) -> None:
    """Mark a save that changes the password or deactivates the user.

    A password-hash upgrade on login is not a change
    (``is_password_hash_upgrade``), and neither is a change the account page
    makes through ``services.change_password``, which closes what it must
    itself.
    """
    instance.__dict__.pop(LOST_ACCESS_ATTR, None)  # left by a failed save
    if raw or instance.pk is None or not _saves(update_fields, "password", "is_active"):
        return
    old = sender.objects.filter(pk=instance.pk).values("password", "is_active").first()
    if old is None:
        return
    deactivated = (
        _saves(update_fields, "is_active")
        and old["is_active"]
        and not instance.is_active
    )
    new_password = (
        _saves(update_fields, "password")
        and old["password"] != instance.password
        and not is_password_hash_upgrade(instance, old["password"], update_fields)
    )
    # services.change_password (the account page) keeps the token and the
    # asking session, and ends the other sessions itself.
    keeps_session = getattr(instance, services.KEEPS_SESSION_ATTR, False)
    setattr(
        instance, LOST_ACCESS_ATTR, deactivated or (new_password and not keeps_session)
    )


@receiver(post_save, sender=User)
def close_sockets_on_lost_password_or_activation(
    sender: type, instance: AbstractBaseUser, **kwargs: Any
) -> None:
    """A new password or deactivation closes all the user's connections.

    Sessions die by themselves (Django checks the password hash); the API
    token is deleted here so a token reconnect is refused too.
    """
    if not instance.__dict__.pop(LOST_ACCESS_ATTR, False):
        return
    services.revoke_tokens(user_id=instance.pk)
    user_id = instance.pk
    _after_commit(lambda: services.revoke_access(user_id=user_id))


# --- logout without database sessions ----------------------------------------


def _sessions_are_rows() -> bool:
    """True if sessions live in the Session table (its receiver publishes)."""
    engine = import_module(settings.SESSION_ENGINE)
    return issubclass(engine.SessionStore, DatabaseSessionStore)


@receiver(user_logged_out)
def close_sockets_of_session(
    sender: object, request: HttpRequest, user: "AuthUser | None", **kwargs: Any
) -> None:
    """Logging out closes the connections that this session signed in.

    With database sessions (the default) the flush deletes the Session row
    and ``close_sockets_of_deleted_session`` publishes; this covers the
    cache and cookie engines only.
    """
    if _sessions_are_rows():
        return
    key = request.session.session_key if request is not None else None
    if user is None or key is None:
        return
    credential = services.credential_id(key)
    user_id = user.pk
    _after_commit(
        lambda: services.revoke_access(user_id=user_id, credential=credential)
    )
