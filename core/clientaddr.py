"""The client's address: one rule for HTTP requests and WebSocket handshakes.

Behind App Platform (``DJANGO_HTTPS=1``) every connection comes from the
platform's proxy, so the socket's peer is the proxy, not the client. The
platform names the client in a header of its own (``CLIENT_IP_HEADER``,
``DO-Connecting-IP`` by default; see docs/security.md). That header is
trusted only behind the proxy: anywhere else a client could forge it, so the
socket's peer is used. ``X-Forwarded-For`` is never read for limits, since
its leftmost entries are whatever the client sent.
"""

import ipaddress
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest

UNKNOWN = "unknown"


def _normalised(value: str | None, exact: bool = False) -> str | None:
    """``value`` as a canonical IP address, or None if it is not one.

    IPv6 clients are grouped by /64 unless ``exact``: one subscriber usually
    holds a whole /64, so a per-address limit keyed by the full address
    would not bind. Logs want the whole address.
    """
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if not exact:
            return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _trusted_header_name() -> str | None:
    if not settings.HTTPS:
        return None
    return settings.CLIENT_IP_HEADER or None


def from_request(request: HttpRequest) -> str:
    """The client address of an HTTP request (``UNKNOWN`` if none)."""
    name = _trusted_header_name()
    if name is not None:
        meta_key = "HTTP_" + name.upper().replace("-", "_")
        found = _normalised(request.META.get(meta_key))
        if found is not None:
            return found
    return _normalised(request.META.get("REMOTE_ADDR")) or UNKNOWN


def from_scope(scope: dict[str, Any], *, exact: bool = False) -> str:
    """The client address of an ASGI connection (``UNKNOWN`` if none).

    ``exact`` keeps an IPv6 address whole instead of its /64 (for logs).
    """
    name = _trusted_header_name()
    if name is not None:
        value = _header(scope.get("headers", ()), name.lower().encode())
        found = _normalised(value, exact)
        if found is not None:
            return found
    client = scope.get("client")
    peer = client[0] if client else None
    return _normalised(peer, exact) or UNKNOWN


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
