"""A pytest plugin: with ``SWITCHBOARD_REQUIRE_ALL_TIERS=1`` (CI), a skip fails.

Tiers skip with one line naming what to install when a service binary is
missing on a developer's machine; CI installs everything, so a skip there
means a tier silently did not run. That holds for a test that skips and for
a module that skips as it is collected (``pytest.skip(allow_module_level=True)``,
``pytest.importorskip``), which leaves no test behind to fail. Loaded by
tests/conftest.py; no Django here, so tests/unit/test_tiers.py runs it alone.
"""

import os

import pytest

REQUIRED = "SWITCHBOARD_REQUIRE_ALL_TIERS"


def _required() -> bool:
    return os.environ.get(REQUIRED) == "1"


def _reason(longrepr: object) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr or "")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _required() and report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under {REQUIRED}=1: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if _required() and report.skipped:
        reason = _reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped as it was collected, under {REQUIRED}=1: {reason}"
    return report
