"""DRF authentication for the HTTP API.

Its own module: DRF reads ``DEFAULT_AUTHENTICATION_CLASSES`` when its views
are imported, so this class cannot live beside the views in ``core.api``.
"""

from typing import Any

from rest_framework import authentication, exceptions

from core import logcontext


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token check, where an inactive user's key is just invalid.

    DRF answers "User inactive or deleted." for those, which tells anyone
    holding a key that the account exists; the protocol says an invalid
    token is "Invalid token." whatever the reason.
    """

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        try:
            user, token = super().authenticate_credentials(key)
        except exceptions.AuthenticationFailed:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        # The request's log lines name the user from here on, not only its
        # access line (core.middleware.LogContextMiddleware).
        logcontext.annotate(user_id=user.pk)
        return user, token
