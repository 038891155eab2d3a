"""The one HTTP client of the tests, ``bench/``, ``soak/`` and ``make stack``.

``request`` sends one request on a fresh connection and returns a
``Response`` (status, headers, body, seconds taken); it never follows
redirects, so a test sees the redirect itself.  ``http_json`` and
``ahttp_json`` are the JSON API shorthand: ``(status, decoded body)``.
A target is a base URL (``http://127.0.0.1:8000``) or anything with a
``url`` attribute, such as ``AppProcess``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from dataclasses import dataclass
from email.message import Message
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

HTTP_TIMEOUT_SECONDS = 10.0
# What a request to a process that is down, starting or stalled raises.
HTTP_ERRORS = (OSError, http.client.HTTPException)
JSON = {"Accept": "application/json"}


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


Target = str | HasUrl


@dataclass(frozen=True)
class Response:
    """One answer; ``headers`` is case-insensitive and has ``get_all``."""

    status: int
    headers: Message
    body: bytes
    elapsed: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The decoded JSON body, or None when the body is empty."""
        return json.loads(self.body) if self.body else None

    def data(self) -> Any:
        """The decoded JSON body if it is JSON, else the text (error pages)."""
        try:
            return self.json()
        except ValueError:
            return self.text


def base_url(target: Target) -> str:
    return target if isinstance(target, str) else target.url


def request(
    target: Target,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body: object | None = None,
    form: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT_SECONDS,
) -> Response:
    """Send one request to ``target`` + ``path`` and read the whole answer.

    ``token`` is sent as ``Authorization: Token …`` (the API's scheme);
    ``json_body``, ``form`` or ``body`` is the payload.  A ``Host`` in
    ``headers`` replaces the address (as a platform's router sends it).
    """
    parts = urlsplit(base_url(target))
    sent: dict[str, str] = {}
    if token is not None:
        sent["Authorization"] = f"Token {token}"
    payload = body
    if json_body is not None:
        payload = json.dumps(json_body).encode()
        sent["Content-Type"] = "application/json"
    elif form is not None:
        payload = urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    sent.update(headers or {})
    started = time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=payload, headers=sent)
        response = conn.getresponse()
        content = response.read()
    finally:
        conn.close()
    return Response(
        response.status, response.headers, content, time.monotonic() - started
    )


def http_json(
    target: Target,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: object | None = None,
    timeout: float = HTTP_TIMEOUT_SECONDS,
) -> tuple[int, Any]:
    """One JSON API request; return (status, decoded JSON or text)."""
    response = request(
        target, method, path, token=token, json_body=body, headers=JSON, timeout=timeout
    )
    return response.status, response.data()


async def ahttp_json(target: Target, method: str, path: str, **kwargs: Any) -> Any:
    """``http_json`` off the event loop, so WebSocket readers keep reading."""
    return await asyncio.to_thread(http_json, target, method, path, **kwargs)


class ApiError(AssertionError):
    """The HTTP API answered with an unexpected status."""


def api(
    target: Target,
    method: str,
    path: str,
    body: object | None = None,
    *,
    token: str | None = None,
    expect: tuple[int, ...] = (200, 201),
    timeout: float = HTTP_TIMEOUT_SECONDS,
) -> Any:
    """One JSON API call that must answer a status in ``expect``; its body."""
    response = request(
        target, method, path, token=token, json_body=body, headers=JSON, timeout=timeout
    )
    if response.status not in expect:
        raise ApiError(
            f"{method} {path} answered {response.status}: {response.text[:500]}"
        )
    return response.json()


def sign_in(target: Target, username: str, password: str, timeout: float = 30.0) -> str:
    """``POST /api/auth/token/``: the user's API token."""
    answer = api(
        target,
        "POST",
        "/api/auth/token/",
        {"username": username, "password": password},
        expect=(200,),
        timeout=timeout,
    )
    return str(answer["token"])


def create_room(
    target: Target,
    token: str,
    slug: str,
    *,
    name: str = "",
    private: bool = False,
    exist_ok: bool = False,
) -> dict[str, Any] | None:
    """``POST /api/rooms/`` as the token's user; return the room.

    With ``exist_ok``, a slug already taken answers None instead of failing.
    """
    response = request(
        target,
        "POST",
        "/api/rooms/",
        token=token,
        json_body={"name": name or f"Room {slug}", "slug": slug, "is_private": private},
        headers=JSON,
    )
    if response.status == 201:
        return response.json()  # type: ignore[no-any-return]
    if exist_ok and response.status == 400 and "slug" in response.text:
        return None
    raise ApiError(f"creating room {slug}: {response.status} {response.text[:500]}")
