"""What a log line is about, and log lines as JSON.

Each HTTP request and WebSocket connection opens a scope (``core.accesslog``)
holding its id and the client's address; code that learns more adds it
(``annotate``: the user, the room). ``ContextFilter`` copies the scope's
fields onto every record logged on the scope's behalf, so the existing
``logger.warning(...)`` calls carry them without passing anything, and
``JsonFormatter`` writes a record as one JSON object per line
(``SWITCHBOARD_LOG_FORMAT=json``, docs/deploy.md, "Logs").

On whose behalf: the task that opened the scope, a task that adopted it
(``adopt``: Django runs a request's middleware in a task of its own), and the
threads that Django and Channels run synchronous code on for it (asgiref
hands them the context). A task that merely inherited the context does not
count: the process's long-lived tasks (the fan-out hub, presence, the
channel layer's receiver) are started by whichever connection first needs
them, and must not log as that connection for the rest of their lives. Such
a task logs for a connection inside ``use(scope)``.
"""

import asyncio
import contextlib
import json
import logging
import logging.config
import weakref
from collections.abc import Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

# What a scope holds, in the order a JSON line shows it.
SCOPE_FIELDS = ("request_id", "connection_id", "client", "user_id", "room")
# What a record may carry besides, passed with ``extra=``.
EVENT_FIELDS = (
    "event",
    "method",
    "path",
    "status",
    "bytes",
    "close_code",
    "duration_ms",
)

Scope = dict[str, object]


@dataclass(frozen=True, slots=True)
class _Binding:
    scope: Scope
    # The task that logs on the scope's behalf; None: bound in a thread.
    task: "weakref.ref[asyncio.Task[object]] | None"


_binding: ContextVar[_Binding | None] = ContextVar("switchboard_log", default=None)


def _current_task() -> "asyncio.Task[object] | None":
    try:
        return asyncio.current_task()
    except RuntimeError:  # a thread without an event loop
        return None


def _bind(scope: Scope) -> Token[_Binding | None]:
    task = _current_task()
    return _binding.set(_Binding(scope, weakref.ref(task) if task else None))


def open_scope(**fields: object) -> Token[_Binding | None]:
    """Start a request's or connection's scope in this task.

    Returns the token that ``close_scope`` takes when it is over.
    """
    return _bind({name: value for name, value in fields.items() if value is not None})


def close_scope(token: Token[_Binding | None]) -> None:
    """End the scope that ``open_scope`` returned ``token`` for."""
    _binding.reset(token)


def adopt() -> None:
    """Log on behalf of the scope this task inherited."""
    binding = _binding.get()
    if binding is not None:
        _bind(binding.scope)


def annotate(**fields: object) -> None:
    """Add fields (None values are skipped) to the scope in this context."""
    binding = _binding.get()
    if binding is not None:
        binding.scope.update(
            (name, value) for name, value in fields.items() if value is not None
        )


def current() -> Scope | None:
    """The scope in this context (annotations reach it), for ``use``."""
    binding = _binding.get()
    return binding.scope if binding is not None else None


@contextlib.contextmanager
def use(scope: Scope | None) -> Iterator[None]:
    """Log on behalf of ``scope`` (from ``current``) inside the block."""
    if scope is None or fields() is scope:
        yield  # nothing to do: binding anew would cost the task memory
        return
    token = _bind(scope)
    try:
        yield
    finally:
        _binding.reset(token)


def fields() -> Scope:
    """The fields of the scope this code logs on behalf of (see above)."""
    binding = _binding.get()
    if binding is None:
        return {}
    task = _current_task()
    if task is None or (binding.task is not None and binding.task() is task):
        return binding.scope
    return {}


class ContextFilter(logging.Filter):
    """Copy the scope's fields onto each record (``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in fields().items():
            record.__dict__.setdefault(name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, fields.

    Only the fields named above are written, never a record's other
    attributes: Django passes the whole request along (``extra``), and
    whatever a record carries must not reach the log by accident.
    """

    def format(self, record: logging.LogRecord) -> str:
        attributes = record.__dict__
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in SCOPE_FIELDS + EVENT_FIELDS:
            value = attributes.get(name)
            if value is None and name == "status":
                value = attributes.get("status_code")  # django.request's
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        # ASCII only: no character of a message can end the line early for
        # a reader that splits on Unicode line breaks (U+2028).
        return json.dumps(line, default=str)


def configure_logging(config: dict[str, Any]) -> None:
    """``LOGGING_CONFIG``: Django's ``dictConfig``, and in JSON mode Python's
    warnings as log records too; printed, a warning would be the one line of
    the log that is not JSON."""
    logging.config.dictConfig(config)
    logging.captureWarnings(settings.LOG_FORMAT == "json")
