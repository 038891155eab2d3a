"""System checks for deployment mistakes (``manage.py check --deploy``)."""

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


@register(Tags.security, deploy=True)
def check_deployment(
    app_configs: Iterable[Any] | None, **kwargs: Any
) -> list[CheckMessage]:
    """Settings that would break or weaken a multi-instance deployment."""
    problems: list[CheckMessage] = []
    if settings.SWITCHBOARD_SECRET_KEY_MISSING:
        problems.append(
            Error(
                "DJANGO_SECRET_KEY is not set.",
                hint="Set it to a long random value (a SECRET on App Platform).",
                id="switchboard.E001",
            )
        )
    if "*" in settings.ALLOWED_HOSTS:
        problems.append(
            Error(
                "DJANGO_ALLOWED_HOSTS contains '*'.",
                hint="It is also the WebSocket Origin allow-list; '*' switches "
                "the Origin check off. List the app's domains (${APP_DOMAIN}).",
                id="switchboard.E002",
            )
        )
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if not settings.DEBUG and layer.endswith("InMemoryChannelLayer"):
        problems.append(
            Warning(
                "The in-memory channel layer is in use without DJANGO_DEBUG.",
                hint="Messages will not cross instances. Set REDIS_URL.",
                id="switchboard.W001",
            )
        )
    cache = settings.CACHES["default"]["BACKEND"]
    if not settings.DEBUG and cache.endswith("LocMemCache"):
        problems.append(
            Warning(
                "The local-memory cache is in use without DJANGO_DEBUG.",
                hint="Rate limits and presence are per process. Set REDIS_URL.",
                id="switchboard.W002",
            )
        )
    for url in settings.REDIS_URLS:
        parts = urlsplit(url)
        if parts.scheme == "redis" and parts.hostname not in LOCAL_HOSTS:
            variable = "REDIS_URLS" if len(settings.REDIS_URLS) > 1 else "REDIS_URL"
            problems.append(
                Warning(
                    f"{variable} uses redis:// (no TLS) to a remote host "
                    f"({parts.hostname}).",
                    hint="Use the rediss:// URL of the managed cluster.",
                    id="switchboard.W003",
                )
            )
    if not settings.DEBUG and not settings.HTTPS:
        problems.append(
            Warning(
                "DJANGO_HTTPS is off.",
                hint="Set DJANGO_HTTPS=1 behind App Platform's TLS edge: HTTPS "
                "redirect, HSTS and secure cookies.",
                id="switchboard.W004",
            )
        )
    return problems
