"""The one mention rule (core/mentions.py), its browser copy
(core/static/core/js/mentions.js) and its database needle agree on one
table of cases."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from core import mentions

MENTIONS_JS = Path(__file__).resolve().parents[2] / "core/static/core/js/mentions.js"

# body: the lowercased names it mentions.
CASES: dict[str, set[str]] = {
    "@bob hi": {"bob"},
    "hi @bob": {"bob"},
    "hi @Bob": {"bob"},
    "@bob.": {"bob"},
    "@bob...": {"bob"},
    "ask @bob.smith now": {"bob.smith"},
    "ask @bob.smith.": {"bob.smith"},
    "@bob, @alice and @carol!": {"bob", "alice", "carol"},
    "(@bob)": {"bob"},
    "'@bob'": {"bob"},
    "mail bob@example.com": set(),
    "x@bob": set(),
    "_@bob": set(),
    ".@bob": set(),
    "-@bob": set(),
    "+@bob": set(),
    "@@bob": {"@bob"},
    "@bob@x": {"bob@x"},
    "@bob-x @bob_y @bob+z": {"bob-x", "bob_y", "bob+z"},
    "@": set(),
    "@.": set(),
    "@ bob": set(),
    "email me: @": set(),
    "@zoë and @名前": {"zoë", "名前"},
    "@ZOË": {"zoë"},
    "@x²": {"x²"},
    "@bob\n@alice": {"bob", "alice"},
    "no mention": set(),
    "@bob's": {"bob"},
    "#@bob": {"bob"},
    "é@bob": set(),
}

USERNAMES = ["bob", "Bob", "alice", "bob.smith", "bob@x", "zoë", "名前", "x²", "bob-x"]


@pytest.mark.parametrize(("body", "expected"), CASES.items())
def test_python_rule(body: str, expected: set[str]) -> None:
    assert mentions.mentioned(body) == expected


@pytest.mark.parametrize("username", USERNAMES)
def test_the_database_needle_finds_every_body_that_mentions(username: str) -> None:
    # The database narrows by it (icontains), the rule decides: a superset.
    needle = mentions.db_needle(username)
    assert needle is not None
    for body in CASES:
        if mentions.mentions(body, username):
            assert needle.lower() in body.lower(), (username, body)


def test_a_name_ending_in_a_dot_cannot_be_mentioned() -> None:
    assert mentions.db_needle("bob.") is None
    assert not mentions.mentions("@bob.", "bob.")


def test_the_browser_copy_agrees() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the browser copy is not checked here")
    script = (
        f"import {{ mentionedNames }} from {json.dumps(MENTIONS_JS.as_uri())};"
        "let input = '';"
        "process.stdin.on('data', (chunk) => { input += chunk; });"
        "process.stdin.on('end', () => {"
        "  const out = JSON.parse(input).map((b) => [...mentionedNames(b)].sort());"
        "  process.stdout.write(JSON.stringify(out));"
        "});"
    )
    bodies = list(CASES)
    result = subprocess.run(
        [node, "--input-type=module", "-e", script],
        input=json.dumps(bodies),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    got = dict(zip(bodies, json.loads(result.stdout), strict=True))
    assert got == {body: sorted(names) for body, names in CASES.items()}
