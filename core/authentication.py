"""DRF authentication for the HTTP API.

Its own module: DRF reads ``DEFAULT_AUTHENTICATION_CLASSES`` when its views
are imported, so this class cannot live beside the views in ``core.api``.
"""

from typing import Any

from rest_framework import authentication, exceptions


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token check, where an inactive user's key is just invalid.

    DRF answers "User inactive or deleted." for those, which tells anyone
    holding a key that the account exists; the protocol says an invalid
    token is "Invalid token." whatever the reason.
    """

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        try:
            return super().authenticate_credentials(key)
        except exceptions.AuthenticationFailed:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
