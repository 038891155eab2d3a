"""Deploy checks (``manage.py check --deploy``) catch configuration mistakes.

Every case runs the real command in a fresh process with an environment built
from scratch. ``check --deploy`` connects to nothing, so the production URLs
below name hosts that do not exist.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUR_CHECK_ID = re.compile(r"switchboard\.[EW]\d{3}")

PRODUCTION = {
    "DJANGO_SECRET_KEY": "vR7#qL2!xP9$kM4@tN8%wB3^zC6&yD1*eF5(gH0)jK2-lA7_sQ",
    "DJANGO_ALLOWED_HOSTS": "switchboard.example.com",
    "DJANGO_HTTPS": "1",
    "REDIS_URL": "rediss://default:pw@redis.example.com:25061",
    "DATABASE_URL": "postgres://u:p@db.example.com:25060/sb?sslmode=require",
}


def clean_env(**variables: str) -> dict[str, str]:
    """A minimal environment plus ``variables``; nothing else is inherited."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(Path.home()),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        **variables,
    }


def check_deploy(
    overrides: dict[str, str | None], *, via_manage_py: bool = True
) -> subprocess.CompletedProcess:
    """``check --deploy --fail-level WARNING`` under production + ``overrides``.

    An override of None removes the variable.
    """
    env = clean_env(DJANGO_SETTINGS_MODULE="backend.settings")
    for name, value in {**PRODUCTION, **overrides}.items():
        if value is not None:
            env[name] = value
    entry = ["manage.py"] if via_manage_py else ["-m", "django"]
    return subprocess.run(
        [sys.executable, *entry, "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def reported_ids(result: subprocess.CompletedProcess) -> set[str]:
    return set(OUR_CHECK_ID.findall(result.stdout + result.stderr))


def test_production_configuration_passes_every_deploy_check():
    result = check_deploy({})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"DJANGO_ALLOWED_HOSTS": "*"}, {"switchboard.E002"}, id="E002-star"
        ),
        pytest.param(
            {"DJANGO_ALLOWED_HOSTS": "switchboard.example.com,*"},
            {"switchboard.E002"},
            id="E002-star-in-list",
        ),
        pytest.param(
            {"REDIS_URL": None},
            {"switchboard.W001", "switchboard.W002"},
            id="W001-W002-no-redis",
        ),
        pytest.param(
            {"REDIS_URL": "redis://default:pw@redis.example.com:25061"},
            {"switchboard.W003"},
            id="W003-plain-remote",
        ),
        pytest.param({"DJANGO_HTTPS": "0"}, {"switchboard.W004"}, id="W004-off"),
        pytest.param({"DJANGO_HTTPS": None}, {"switchboard.W004"}, id="W004-unset"),
    ],
)
def test_each_mistake_is_reported_by_its_own_check(overrides, expected):
    result = check_deploy(overrides)
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported_ids(result) == expected, result.stderr


@pytest.mark.parametrize(
    "redis_url",
    ["redis://localhost:6379/0", "redis://[::1]:6379"],
)
def test_redis_without_tls_is_fine_on_this_machine(redis_url):
    result = check_deploy({"REDIS_URL": redis_url})
    assert "switchboard.W003" not in reported_ids(result)
    assert result.returncode == 0, result.stderr


def test_in_memory_layer_is_fine_in_debug():
    result = check_deploy({"REDIS_URL": None, "DJANGO_DEBUG": "1"})
    assert reported_ids(result) == set(), result.stderr


def test_missing_secret_key_is_an_error_of_its_own():
    """``django-admin check`` skips manage.py's one-line stop and reports E001."""
    result = check_deploy({"DJANGO_SECRET_KEY": None}, via_manage_py=False)
    assert result.returncode == 1
    assert reported_ids(result) == {"switchboard.E001"}, result.stderr


def test_manage_py_stops_before_the_checks_without_a_secret_key():
    result = check_deploy({"DJANGO_SECRET_KEY": None})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_our_checks_only_run_with_deploy():
    """Plain ``manage.py check`` stays quiet for a development setup."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=clean_env(DJANGO_SECRET_KEY=PRODUCTION["DJANGO_SECRET_KEY"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert reported_ids(result) == set()


def test_the_models_and_the_migrations_agree():
    """A model change without its migration would deploy a schema the code
    does not expect: ``makemigrations --check`` fails on it (CI runs it too,
    in ``make lint``)."""
    result = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=ROOT,
        env=clean_env(DJANGO_SETTINGS_MODULE="backend.settings", DJANGO_DEBUG="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout
