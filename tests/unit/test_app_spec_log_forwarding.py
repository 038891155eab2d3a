"""The commented log forwarding example in .do/ is valid once uncommented.

Both spec files carry a ``log_destinations`` block on the web service,
commented out so that nothing is forwarded until a destination is chosen
(docs/deploy.md, "Forwarding logs"). Uncommented, it must satisfy the App
Spec schema and hold no secret. Like test_app_spec.py, no Django is needed.
"""

import re
from pathlib import Path

import yaml

from tests.unit.test_app_spec import (
    APP_SPEC,
    APP_SPEC_SCHEMA_ID,
    DEPLOY_TEMPLATE,
    DEPLOY_TEMPLATE_SCHEMA_ID,
    app_spec,
    component,
    deploy_template,
    schema_errors,
    undeclared_keys,
)

START = re.compile(r"^(?P<indent> *)# log_destinations:$")
SECRET_KEYS = {"api_key", "token", "password", "basic_auth"}


def commented_example(path: Path) -> list[dict]:
    """The ``log_destinations`` block of ``path``, uncommented and parsed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [n for n, line in enumerate(lines) if START.match(line)]
    assert len(starts) == 1, f"{path.name}: one commented log_destinations block"
    prefix = START.match(lines[starts[0]])["indent"] + "# "
    block = []
    for line in lines[starts[0] :]:
        if not line.startswith(prefix):
            break
        block.append(line.removeprefix(prefix))
    return yaml.safe_load("\n".join(block))["log_destinations"]


def keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for value in node.values() for k in keys(value)}
    if isinstance(node, list):
        return {k for value in node for k in keys(value)}
    return set()


def test_the_example_is_commented_out_so_nothing_is_forwarded_yet():
    assert "log_destinations" not in component(app_spec(), "services", "web")
    web = component(deploy_template()["spec"], "services", "web")
    assert "log_destinations" not in web


def test_the_app_spec_example_uncommented_is_a_valid_spec():
    spec = app_spec()
    destinations = commented_example(APP_SPEC)
    component(spec, "services", "web")["log_destinations"] = destinations
    assert schema_errors(spec, APP_SPEC_SCHEMA_ID) == []
    assert undeclared_keys(spec, APP_SPEC_SCHEMA_ID) == []
    assert {kind for d in destinations for kind in d} >= {"name", "open_search"}


def test_the_template_example_is_the_same_and_valid_too():
    template = deploy_template()
    destinations = commented_example(DEPLOY_TEMPLATE)
    assert destinations == commented_example(APP_SPEC)
    component(template["spec"], "services", "web")["log_destinations"] = destinations
    assert schema_errors(template, DEPLOY_TEMPLATE_SCHEMA_ID) == []
    assert undeclared_keys(template, DEPLOY_TEMPLATE_SCHEMA_ID) == []


def test_the_example_holds_no_secret():
    """Keyed destinations are added in the control panel (docs/deploy.md)."""
    assert not keys(commented_example(APP_SPEC)) & SECRET_KEYS
