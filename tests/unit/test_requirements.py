"""requirements.txt (what App Platform installs) agrees with pyproject.toml."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt line {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version.strip()
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def test_every_runtime_dependency_is_pinned_within_its_range():
    pins = pinned()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is missing: run `make requirements`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside {requirement.specifier}: "
            "run `make requirements`"
        )


def test_requirements_pin_the_fixed_daphne_and_no_dev_tools():
    pins = pinned()
    major, minor, patch = (int(part) for part in pins["daphne"].split(".")[:3])
    assert (major, minor, patch) >= (4, 2, 3)
    for dev_only in ("pytest", "ruff", "playwright", "hypothesis"):
        assert dev_only not in pins
