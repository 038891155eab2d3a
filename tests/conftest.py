"""Fixtures shared by every tier."""

import pytest


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts with no presence entries and no throttle history."""
    # Imported here so Django-free tests (-p no:django) can still collect.
    from django.core.cache import cache

    from core import presence

    presence.reset_for_tests()
    cache.clear()
    yield
    presence.reset_for_tests()
