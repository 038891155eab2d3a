"""Access changes that must cut live connections off (close 4403)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import pre_save
from django.dispatch import receiver
from django.http import HttpRequest
from rest_framework.authtoken.models import Token

from core import services


@receiver(user_logged_out)
def close_sockets_of_session(
    sender: object, request: HttpRequest, user: object, **kwargs: object
) -> None:
    """Logging out closes the connections that this session signed in."""
    key = request.session.session_key if request is not None else None
    if user is None or key is None:
        return
    credential = services.credential_id(key)
    user_id = user.pk
    transaction.on_commit(
        lambda: services.revoke_access(user_id=user_id, credential=credential)
    )


@receiver(pre_save, sender=get_user_model())
def close_sockets_on_password_change(
    sender: type, instance: object, **kwargs: object
) -> None:
    """A new password (or deactivation) closes all the user's connections.

    Sessions die by themselves (Django checks the password hash); tokens are
    deleted here so a token reconnect is refused too.
    """
    if instance.pk is None or kwargs.get("raw"):
        return
    old = sender.objects.filter(pk=instance.pk).values("password", "is_active").first()
    if old is None:
        return
    if old["password"] == instance.password and old["is_active"] == instance.is_active:
        return
    Token.objects.filter(user_id=instance.pk).delete()
    user_id = instance.pk
    transaction.on_commit(lambda: services.revoke_access(user_id=user_id))
