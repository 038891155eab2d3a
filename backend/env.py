"""Typed readers for configuration that comes only from the environment.

Each helper raises ``ImproperlyConfigured`` with one line that names the
variable and what is wrong; ``manage.py`` and ``asgi.py`` print that line and
exit, so a bad deploy fails at start-up instead of at first use.
"""

import atexit
import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Callable
from typing import overload
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# With a string default the answer is always a string.
@overload
def env_str(name: str) -> str | None: ...
@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: str | None) -> str | None: ...


def env_str(name: str, default: str | None = None) -> str | None:
    """Return the variable stripped of surrounding blanks, or ``default``."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip()


def env_bool(name: str, default: bool = False) -> bool:
    """Parse ``1/0/true/false/yes/no/on/off`` (any case)."""
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}: expected a boolean (1/0, true/false, yes/no, on/off), got {value!r}"
    )


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """Parse a whole number no smaller than ``minimum``."""
    value = env_str(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}: expected a whole number, got {value!r}"
        ) from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {number}")
    return number


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    """Parse a number no smaller than ``minimum``."""
    value = env_str(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}: expected a number, got {value!r}"
        ) from None
    if not math.isfinite(number) or number < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {value}")
    return number


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """Return one of ``choices`` (any case), or ``default`` when unset."""
    value = env_str(name)
    if value is None:
        return default
    if value.lower() not in choices:
        expected = " or ".join(choices)
        raise ImproperlyConfigured(f"{name}: expected {expected}, got {value!r}")
    return value.lower()


def env_list(name: str, default: list[str]) -> list[str]:
    """Parse a comma-separated list; blank items are dropped."""
    value = os.environ.get(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(name: str, *, schemes: set[str], default: str | None = None) -> str | None:
    """Return a URL whose scheme is one of ``schemes``, or ``default``."""
    value = env_str(name)
    if value is None:
        return default
    return _checked_url(name, value, schemes)


def env_urls(name: str, *, schemes: set[str]) -> list[str]:
    """Parse a comma list of URLs (each as ``env_url``), none listed twice;
    empty when unset."""
    urls = [_checked_url(name, url, schemes) for url in env_list(name, [])]
    for position, url in enumerate(urls):
        if url in urls[:position]:
            raise ImproperlyConfigured(f"{name}: {_shown(url)} is listed twice")
    return urls


def _shown(url: str) -> str:
    """``url`` without its password, for an error line."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return repr(parts._replace(netloc=user + netloc).geturl())


def _checked_url(name: str, value: str, schemes: set[str]) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        expected = " or ".join(f"{scheme}://" for scheme in sorted(schemes))
        shown = parts.scheme or "none"
        raise ImproperlyConfigured(f"{name}: unknown scheme {shown!r}; use {expected}")
    if parts.scheme != "sqlite" and not parts.hostname:
        raise ImproperlyConfigured(f"{name}: the URL has no host")
    return value


def env_origins(name: str, default: list[str]) -> list[str]:
    """Parse a comma list of origins (``scheme://host[:port]``)."""
    origins = env_list(name, default)
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ImproperlyConfigured(
                f"{name}: {origin!r} is not an origin like https://example.com"
            )
    return origins


def env_pem_or_path(name: str) -> str | None:
    """Return PEM text given inline or read from a file path."""
    value = env_str(name)
    if value is None:
        return None
    if "-----BEGIN" in value:
        return value
    try:
        with open(value, encoding="ascii") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImproperlyConfigured(
            f"{name}: neither PEM text nor a readable file ({exc.__class__.__name__})"
        ) from None
    if "-----BEGIN" not in text:
        raise ImproperlyConfigured(f"{name}: file {value!r} holds no PEM certificate")
    return text


# PEM text already written by env_pem_file in this process, by content.
_pem_files: dict[str, str] = {}


def env_pem_file(name: str) -> str | None:
    """Return the path of a file holding the PEM given inline or as a path.

    For libraries that read certificates only from files (libpq's
    ``sslrootcert``). Inline PEM text is written once per process to a
    private temporary file (mode 0600), removed when the process exits.
    """
    pem = env_pem_or_path(name)
    if pem is None:
        return None
    value = env_str(name) or ""
    if "-----BEGIN" not in value:
        return os.path.abspath(value)
    if pem not in _pem_files:
        # mkstemp creates the file readable by this user only, under a name
        # nobody else can have taken first.
        descriptor, path = tempfile.mkstemp(prefix="switchboard-", suffix=".pem")
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(pem.rstrip("\n") + "\n")
        atexit.register(_remove_quietly, path)
        _pem_files[pem] = path
    return _pem_files[pem]


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


# Commands that must work without runtime variables: App Platform's build runs
# collectstatic with none of them set.
BUILD_TIME_COMMANDS = {"collectstatic", "help", "version", "--help", "-h", "--version"}


def require_runtime_settings() -> None:
    """Raise if a setting that serving needs is missing (the secret key)."""
    from django.conf import settings

    if settings.SWITCHBOARD_SECRET_KEY_MISSING:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY: not set; set it to a long random value "
            "(or DJANGO_DEBUG=1 for local development)"
        )


def exit_on_bad_configuration(check: Callable[[], object]) -> None:
    """Run ``check``; on a configuration error print one line and exit 2."""
    try:
        check()
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"Configuration error: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None
