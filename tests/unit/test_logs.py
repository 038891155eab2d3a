"""channels_redis' receive-task tracebacks during a Redis outage (core.logs)."""

import logging

import pytest
from django.http import HttpResponse
from django.utils.log import log_response
from redis.exceptions import ConnectionError as RedisConnectionError

from core import logs

LAYER_LOGGER = logging.getLogger("channels_redis.pubsub")


@pytest.fixture(autouse=True)
def _fresh_limiter(settings):
    settings.LOG_LIMIT_LINES = 3
    logs.reset_for_tests()
    yield
    logs.reset_for_tests()


def receive_task_fails(exc: BaseException) -> None:
    """What channels_redis' _do_receiving does on each failed retry."""
    try:
        raise exc
    except BaseException:
        LAYER_LOGGER.exception("Unexpected exception in receive task")


def layer_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LAYER_LOGGER.name]


@pytest.mark.parametrize(
    "exc",
    [
        RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Refused."),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_a_lost_redis_connection_is_a_warning_without_traceback(caplog, exc):
    with caplog.at_level(logging.INFO):
        receive_task_fails(exc)
    [record] = layer_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    message = record.getMessage()
    assert message.startswith("Unexpected exception in receive task (Redis unreachable")
    assert type(exc).__name__ in message
    assert str(exc) in message


def test_an_outage_does_not_flood_the_log(caplog):
    """One retry a second for a minute: LOG_LIMIT_LINES lines and a notice."""
    error = RedisConnectionError("Connection closed by server.")
    with caplog.at_level(logging.INFO):
        for _ in range(60):
            receive_task_fails(error)
    records = layer_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING] * 4
    assert "suppressing similar lines" in records[-1].getMessage()


def test_each_line_names_its_key_as_the_event(caplog):
    """The key is the ``event`` of structured logs (core.logcontext)."""
    error = RedisConnectionError("Connection closed by server.")
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            receive_task_fails(error)
    events = {r.event for r in layer_records(caplog)}
    assert events == {"channels_redis.connection_lost"}


def test_any_other_exception_stays_an_error_with_its_traceback(caplog):
    with caplog.at_level(logging.INFO):
        receive_task_fails(KeyError("a bug, not an outage"))
    [record] = layer_records(caplog)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.getMessage() == "Unexpected exception in receive task"


# --- Django's line for a 5xx answer ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "level"), [(503, logging.WARNING), (500, logging.ERROR)]
)
def test_a_503_is_logged_as_a_warning_and_a_500_as_an_error(rf, caplog, status, level):
    request = rf.get("/readyz")
    with caplog.at_level(logging.INFO, logger="django.request"):
        log_response(
            "%s: %s",
            "Answered",
            request.path,
            response=HttpResponse(status=status),
            request=request,
        )
    [record] = [r for r in caplog.records if r.name == "django.request"]
    assert (record.levelno, record.levelname) == (level, logging.getLevelName(level))
