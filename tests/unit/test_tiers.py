"""Under SWITCHBOARD_REQUIRE_ALL_TIERS=1 (CI), a tier that skips fails the run
(tests/support/tiers.py): a skipped test, and a module skipped as it is
collected, which leaves no test behind to fail. Run on a sample suite in a
pytest of its own."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SKIPS = {
    "test": 'import pytest\n\ndef test_it():\n    pytest.skip("no redis-server")\n',
    "module": (
        "import pytest\n\n"
        'pytest.skip("no redis-server", allow_module_level=True)\n\n'
        "def test_it():\n    pass\n"
    ),
    "import": 'import pytest\n\npytest.importorskip("no_such_module_here")\n',
}


def run_sample(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    # A tier that runs beside the one that skips.
    pytester.makepyfile(test_sample=source, test_other="def test_ok():\n    pass\n")
    return pytester.runpytest_subprocess(
        "-p", "tests.support.tiers", "-p", "no:django", "-p", "no:cacheprovider"
    )


@pytest.mark.parametrize("where", SKIPS)
def test_a_skip_passes_on_a_laptop(pytester, monkeypatch, where):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("SWITCHBOARD_REQUIRE_ALL_TIERS", raising=False)
    result = run_sample(pytester, SKIPS[where])
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=1, skipped=1)


@pytest.mark.parametrize("where", SKIPS)
def test_a_skip_fails_when_every_tier_is_required(pytester, monkeypatch, where):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("SWITCHBOARD_REQUIRE_ALL_TIERS", "1")
    result = run_sample(pytester, SKIPS[where])
    assert result.ret != pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["*under SWITCHBOARD_REQUIRE_ALL_TIERS=1*"])
