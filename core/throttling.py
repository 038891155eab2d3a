"""HTTP throttles: sign-in attempts, password hashing, and writes per user.

Credential endpoints (the token endpoint, the login page, the admin login,
signup) take from buckets shared by every instance (``core.limits``):

- every attempt, per client address (``credentials.address``);
- every password check of a username, per (username, address) and per
  username (``credentials.user_address``, ``credentials.user``). The check is
  charged before the password is hashed, so a guess that would succeed is
  refused too once a limit is reached: the limit bounds guesses exactly.
  A person's own successful sign-ins cost one token each, which the burst
  absorbs. Keying the tighter limit by address as well means an attacker's
  guesses from elsewhere never lock the owner out at their own address;
  only guessing spread over many addresses reaches the per-username limit;
- accounts created, per client address (``signup.address``).

Password hashing is bounded per process (``password_hashing``): PBKDF2 is
hundreds of milliseconds of CPU, and unbounded concurrent guesses would
starve the event loop that carries every WebSocket.

Views turn a ``Refusal`` into a 429 (or 503 when hashing is busy) with
``Retry-After``.
"""

import hashlib
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse

from core import clientaddr, limits, logs

logger = logging.getLogger(__name__)

TOO_MANY_ATTEMPTS = "Too many sign-in attempts. Try again in {seconds} s."
TOO_MANY_SIGNUPS = "Too many new accounts from your network. Try again in {seconds} s."
TOO_MANY_WRITES = "Too many {what}. Try again in {seconds} s."
HASHING_BUSY = "The server is busy. Try again in {seconds} s."


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused, and when the client may try again."""

    status: int
    retry_after: float  # seconds
    detail: str

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds for ``Retry-After``, rounded up, at least 1."""
        return max(1, math.ceil(self.retry_after))

    @property
    def retry_after_ms(self) -> int:
        return max(1, math.ceil(self.retry_after * 1000))

    def apply(self, response: HttpResponse) -> HttpResponse:
        """Give ``response`` the refusal's status and ``Retry-After``."""
        response.status_code = self.status
        response["Retry-After"] = str(self.retry_after_seconds)
        return response


class Busy(Exception):
    """Every password-hashing slot stayed taken for the whole wait."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


def _refused(name: str, who: str, wait: float, template: str, **words: str) -> Refusal:
    seconds = max(1, math.ceil(wait))
    # ``who`` is an address or a user id; usernames stay out of the logs.
    logs.limited(logger, logging.INFO, f"http.{name}", "%s limit refused %s", name, who)
    return Refusal(429, wait, template.format(seconds=seconds, **words))


def _username_ident(username: str) -> str:
    """A fixed-size key for any username; case variants share it."""
    return hashlib.sha256(username.casefold().encode()).hexdigest()[:32]


def _spend(
    name: str, ident: str, setting: str, who: str, template: str, **words: str
) -> Refusal | None:
    """Take a token from bucket (name, ident), sized by the settings
    ``<setting>_RATE_PER_SECOND`` and ``<setting>_BURST``; None if allowed."""
    wait = limits.take(
        name,
        ident,
        getattr(settings, f"{setting}_RATE_PER_SECOND"),
        getattr(settings, f"{setting}_BURST"),
    )
    return _refused(name, who, wait, template, **words) if wait else None


def check_attempt(request: HttpRequest) -> Refusal | None:
    """Count one sign-in attempt of the client's address; None if allowed."""
    address = clientaddr.from_request(request)
    return _spend(
        "credentials.address", address, "CREDENTIAL_ADDRESS", address,
        TOO_MANY_ATTEMPTS,
    )  # fmt: skip


def check_password_check(request: HttpRequest, username: str) -> Refusal | None:
    """Count one password check of ``username``; None if it may run."""
    user = _username_ident(username)
    address = clientaddr.from_request(request)
    return _spend(
        "credentials.user_address", f"{user}:{address}", "CREDENTIAL_USER_ADDRESS",
        address, TOO_MANY_ATTEMPTS,
    ) or _spend(
        "credentials.user", user, "CREDENTIAL_USER", address, TOO_MANY_ATTEMPTS
    )  # fmt: skip


def check_new_account(request: HttpRequest) -> Refusal | None:
    """Count one account created from the client's address."""
    address = clientaddr.from_request(request)
    return _spend(
        "signup.address", address, "SIGNUP_ADDRESS", address, TOO_MANY_SIGNUPS
    )


# --- writes per user -----------------------------------------------------------

WRITES = {
    # name: (settings prefix, what the user is told they did too often)
    "rooms.create": ("ROOM_CREATE", "new rooms"),
    "members.add": ("MEMBER_ADD", "members added"),
}


def check_write(name: str, user: AbstractBaseUser) -> Refusal | None:
    """Count one write ``name`` (a key of ``WRITES``) by ``user``."""
    setting, what = WRITES[name]
    return _spend(
        name, str(user.pk), setting, f"user {user.pk}", TOO_MANY_WRITES, what=what
    )


# --- searches -------------------------------------------------------------------


def check_search(request: HttpRequest, user: object) -> Refusal | None:
    """Count one search by ``user``, per client address when anonymous
    (``limits.owner``); None if allowed."""
    who = limits.owner(user, clientaddr.from_request(request))
    return _spend("search", who, "SEARCH", who, TOO_MANY_WRITES, what="searches")


def check_read(request: HttpRequest, user: object) -> Refusal | None:
    """Count one move of a read position by ``user``: the ``read`` bucket,
    which the WebSocket's ``read`` frame spends too; None if allowed."""
    who = limits.owner(user, clientaddr.from_request(request))
    return _spend(
        "read", who, "READ", who, TOO_MANY_WRITES, what="read positions moved"
    )


# --- username lookups -------------------------------------------------------------


def check_user_lookup(user: AbstractBaseUser) -> Refusal | None:
    """Count one username lookup (``GET /api/users/``) by ``user``."""
    return _spend(
        "users.lookup", str(user.pk), "USERS_LOOKUP", f"user {user.pk}",
        TOO_MANY_WRITES, what="user lookups",
    )  # fmt: skip


# --- password hashing ------------------------------------------------------------

_semaphore: threading.BoundedSemaphore | None = None
_semaphore_size = 0
_semaphore_lock = threading.Lock()


def _hashing_semaphore() -> threading.BoundedSemaphore:
    global _semaphore, _semaphore_size
    with _semaphore_lock:
        size = settings.PASSWORD_HASH_CONCURRENCY
        if _semaphore is None or size != _semaphore_size:
            _semaphore, _semaphore_size = threading.BoundedSemaphore(size), size
        return _semaphore


@contextmanager
def password_hashing() -> Iterator[None]:
    """Hold one of this process's password-hashing slots.

    Waits at most ``PASSWORD_HASH_WAIT_SECONDS`` for one, then raises
    ``Busy`` (a 503): queueing without bound would only move the pile-up
    from the CPU to memory and threads.
    """
    semaphore = _hashing_semaphore()
    wait = settings.PASSWORD_HASH_WAIT_SECONDS
    if not semaphore.acquire(timeout=wait):
        logs.limited(logger, logging.WARNING, "http.hashing_busy", "hashing busy")
        retry = max(1.0, wait)
        raise Busy(Refusal(503, retry, HASHING_BUSY.format(seconds=math.ceil(retry))))
    try:
        yield
    finally:
        semaphore.release()


def reset_for_tests() -> None:
    """A fresh hashing semaphore (the buckets are ``limits.reset_for_tests``)."""
    global _semaphore, _semaphore_size
    with _semaphore_lock:
        _semaphore, _semaphore_size = None, 0
