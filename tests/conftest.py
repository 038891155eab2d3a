"""Fixtures shared by every tier."""

import pytest
from django.core.cache import cache

from core import presence


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts with no presence entries and no throttle history."""
    presence.reset_for_tests()
    cache.clear()
    yield
    presence.reset_for_tests()
