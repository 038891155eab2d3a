"""Django's guard against sync ORM calls in async code stays on in every tier
of a full run and in every process the tests start: the servers run with it
in production, so they are tested with it."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import SynchronousOnlyOperation

from harness import app


@pytest.mark.django_db
async def test_a_sync_orm_call_in_async_code_is_refused():
    with pytest.raises(SynchronousOnlyOperation):
        get_user_model().objects.count()


def test_processes_the_tests_start_keep_the_guard(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # as a shell might
    env = app.child_env({"PORT": "8000"})
    assert "DJANGO_ALLOW_ASYNC_UNSAFE" not in env
    assert env["PORT"] == "8000"
