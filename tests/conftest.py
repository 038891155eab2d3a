"""Fixtures shared by every tier."""

import json
import os

import pytest

# tiers: a skip fails under SWITCHBOARD_REQUIRE_ALL_TIERS=1 (CI), a module's
# too. pytester: tests/unit/test_tiers.py runs pytest on a sample suite.
pytest_plugins = ["tests.support.tiers", "pytester"]


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts with no presence, limits, throttle history or groups."""
    # Imported here so Django-free tests (-p no:django) can still collect.
    from channels.layers import channel_layers
    from django.core.cache import cache

    from core import (
        admission,
        collector,
        consumers,
        limits,
        logs,
        presence,
        throttling,
    )

    presence.reset_for_tests()
    limits.reset_for_tests()
    logs.reset_for_tests()
    throttling.reset_for_tests()
    admission.reset_for_tests()
    collector.reset_for_tests()
    consumers.shutdown_reason.cache_clear()
    channel_layers.backends.clear()  # a fresh in-memory layer per test
    cache.clear()
    yield
    presence.reset_for_tests()
    limits.reset_for_tests()
    collector.reset_for_tests()


@pytest.fixture(autouse=True)
def _fast_hashing_and_plain_static_storage(settings):
    """Cheap password hashing, static URLs without collectstatic, and no
    periodic access re-read in the middle of a test.

    Production's manifest storage needs the build's collectstatic output;
    in-process tests render pages without it. Real server processes
    (integration, browser) run collectstatic like the build does.
    """
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The periodic access re-read starts at a random moment of its interval;
    # tests that need it set their own interval.
    settings.ACCESS_RECHECK_SECONDS = 3600.0
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }


def pytest_collection_modifyitems(config, items):
    """Run the browser tier last.

    Playwright's sync API keeps an event loop running in the main thread
    while its fixtures live (the browser package), and asyncio.run()
    refuses to start beside it. Under ``make mutate`` the quickest tests run
    first (durations from mutmut's own measurement): most mutants die at
    the first failure, and a quick test catches most.
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
    if os.environ.get("MUTANT_UNDER_TEST"):
        durations = _mutmut_durations()
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


def _mutmut_durations() -> dict[str, float]:
    """Each test's duration as ``make mutate`` measured it, if it did."""
    try:
        with open("mutmut-stats.json") as stats:  # in mutants/, where it runs
            return json.load(stats)["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return {}
