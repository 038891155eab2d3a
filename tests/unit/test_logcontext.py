"""Log lines know what they are about, and JSON lines are one object each."""

import asyncio
import io
import json
import logging
import sys

import pytest

from core import logcontext
from core.logcontext import ContextFilter, JsonFormatter


def record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("core.test", logging.WARNING, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def tagged(made: logging.LogRecord) -> logging.LogRecord:
    ContextFilter().filter(made)
    return made


def as_json(made: logging.LogRecord) -> dict:
    line = JsonFormatter().format(made)
    assert "\n" not in line
    return json.loads(line)


# --- the formatter -------------------------------------------------------------


def test_a_record_is_one_json_object_with_time_level_logger_and_message():
    line = as_json(record("hello %s", "world"))
    assert line["level"] == "WARNING"
    assert line["logger"] == "core.test"
    assert line["message"] == "hello world"
    assert line["time"].endswith("Z")
    assert list(line)[:4] == ["time", "level", "logger", "message"]


def test_fields_come_after_the_message_and_absent_ones_are_left_out():
    line = as_json(record(request_id="r1", client="203.0.113.7", status=200))
    assert line["request_id"] == "r1"
    assert line["client"] == "203.0.113.7"
    assert line["status"] == 200
    assert "user_id" not in line
    assert "room" not in line


def test_other_attributes_of_a_record_are_never_written():
    """Django passes the request along with django.request's lines."""
    line = as_json(record(request="<ASGIRequest: GET '/?token=s3cr3t'>", secret=1))
    assert "request" not in line
    assert "s3cr3t" not in json.dumps(line)


def test_django_requests_status_code_is_the_status():
    assert as_json(record(status_code=404))["status"] == 404


def test_a_traceback_stays_on_the_line():
    try:
        raise ValueError("boom")
    except ValueError:
        made = record()
        made.exc_info = sys.exc_info()
    line = as_json(made)
    assert "Traceback" in line["exc_info"]
    assert "ValueError: boom" in line["exc_info"]


def test_line_breaks_of_any_kind_are_escaped():
    line = JsonFormatter().format(record("a\nb\r\u2028c\u0085d"))
    assert line.splitlines() == [line]
    assert json.loads(line)["message"] == "a\nb\r\u2028c\u0085d"


# --- the filter ------------------------------------------------------------------


def test_outside_any_scope_a_record_gets_no_fields():
    made = tagged(record())
    assert "request_id" not in made.__dict__


def test_inside_a_scope_a_record_gets_its_fields_and_annotations():
    token = logcontext.open_scope(request_id="r1", client="203.0.113.7", room=None)
    try:
        logcontext.annotate(user_id=7, room=None)
        made = tagged(record())
    finally:
        logcontext.close_scope(token)
    assert (made.request_id, made.client, made.user_id) == ("r1", "203.0.113.7", 7)
    assert "room" not in made.__dict__
    assert "request_id" not in tagged(record()).__dict__  # closed


def test_a_records_own_fields_win():
    token = logcontext.open_scope(request_id="r1")
    try:
        made = tagged(record(request_id="mine"))
    finally:
        logcontext.close_scope(token)
    assert made.request_id == "mine"


async def test_a_task_that_only_inherited_the_scope_logs_as_nobody():
    """The hub and other long-lived tasks start inside some connection."""
    token = logcontext.open_scope(connection_id="c1")
    try:
        inherited = await asyncio.create_task(_fields_in_a_task())
        own = logcontext.fields()
    finally:
        logcontext.close_scope(token)
    assert inherited == {}
    assert own == {"connection_id": "c1"}


async def _fields_in_a_task() -> dict:
    return dict(logcontext.fields())


async def test_a_task_that_adopts_the_scope_or_uses_it_logs_for_it():
    token = logcontext.open_scope(request_id="r1")
    scope = logcontext.current()
    try:

        async def adopting() -> dict:
            logcontext.adopt()
            return dict(logcontext.fields())

        adopted = await asyncio.create_task(adopting())
    finally:
        logcontext.close_scope(token)

    async def using() -> tuple[dict, dict]:
        with logcontext.use(scope):
            inside = dict(logcontext.fields())
        return inside, dict(logcontext.fields())

    inside, after = await asyncio.create_task(using())
    assert adopted == inside == {"request_id": "r1"}
    assert after == {}


async def test_threads_given_the_context_log_for_the_scope():
    """asgiref and asyncio.to_thread hand their threads the context."""
    token = logcontext.open_scope(request_id="r1")
    try:
        in_thread = await asyncio.to_thread(lambda: dict(logcontext.fields()))
    finally:
        logcontext.close_scope(token)
    assert in_thread == {"request_id": "r1"}


def test_annotations_made_elsewhere_reach_the_scope():
    """A thread adds the user; the access line, logged later, has it."""
    token = logcontext.open_scope(request_id="r1")
    try:
        scope = logcontext.current()
        with logcontext.use(scope):
            logcontext.annotate(user_id=3)
        assert logcontext.fields()["user_id"] == 3
    finally:
        logcontext.close_scope(token)


# --- through the logging configuration -----------------------------------------


@pytest.fixture
def json_logger():
    """A logger writing like the console handler under SWITCHBOARD_LOG_FORMAT=json."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.logcontext")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_existing_log_calls_carry_the_scope_as_json(json_logger):
    logger, stream = json_logger
    token = logcontext.open_scope(connection_id="c1", client="203.0.113.7")
    try:
        logcontext.annotate(user_id=5, room="lobby")
        logger.warning("closing a client of room %s: %s", "lobby", "too slow")
    finally:
        logcontext.close_scope(token)
    logger.info("after", extra={"event": "x.done", "duration_ms": 1.5})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "closing a client of room lobby: too slow"
    assert first["connection_id"] == "c1"
    assert (first["client"], first["user_id"], first["room"]) == (
        "203.0.113.7",
        5,
        "lobby",
    )
    assert second == {
        "time": second["time"],
        "level": "INFO",
        "logger": "tests.logcontext",
        "message": "after",
        "event": "x.done",
        "duration_ms": 1.5,
    }
