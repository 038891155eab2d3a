"""The documentation is self-contained: its links and anchors all resolve.

README.md and every Markdown file under docs/ are read as GitHub renders
them. Every link ``[text](target)`` that is not a web address must name a
file in the repository, and its ``#fragment``, if any, a heading (or an
explicit anchor) of the Markdown file it points to, slugged the way GitHub
does. No link points at a placeholder repository, and no document cites a
file from outside this repository. The variables, metrics and alerts the
docs name are the ones the code and the App Spec have. No database.
"""

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

# Placeholders a link must never carry: a button or link to one of these
# sends a newcomer nowhere.
PLACEHOLDERS = ("your-org", "your-username", "your-fork", "<org>", "<owner>")
# A Markdown file a document names, with or without a path before it.
MARKDOWN_NAME = re.compile(r"\b[\w-]+\.md\b")
# A relative path that starts by climbing.
CLIMBING_PATH = re.compile(r"(?:\.\./)+[\w./-]+")
# Paths the docs name in code spans that a run writes, not the repository.
GENERATED = ("soak/results/", "bench/results/partial/")
# Top-level folders: a code span starting with one names a repository path.
REPO_DIRS = ("core", "backend", "docs", "tests", "bench", "soak", ".do", ".ci")
# Variables the docs name that the code does not read, on purpose: the
# protocol guide's example client reads its own, and one is named as gone.
NOT_SETTINGS = {"SWITCHBOARD_TOKEN", "SWITCHBOARD_WS", "SWITCHBOARD_CHANNEL_CAPACITY"}
ENV_VAR = re.compile(r"\b(?:SWITCHBOARD|DJANGO)_[A-Z0-9_]*[A-Z0-9]\b")
METRIC = re.compile(r"\b(?:switchboard|process|python_gc)_[a-z0-9_]*[a-z0-9]\b")

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# Innermost first: [![alt](image)](target) yields the image, then the link.
LINK = re.compile(r"!?\[([^\[\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:[^>]*\s)?(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif (
            fence is not None
            and match
            and match.group(1).startswith(fence)
            and line.strip() == match.group(1)
        ):
            fence = None
        elif fence is None:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before duplicate suffixes).

    Markup goes (backticks, emphasis, a link's target), the text is
    lowercased, every character but letters, digits, underscores, hyphens
    and spaces is dropped, and each space becomes a hyphen.
    """
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text).replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every fragment that reaches a place in ``path``."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text()):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    for number, line in prose_lines(path.read_text()):
        line = CODE_SPAN.sub("", line)
        while match := LINK.search(line):
            yield number, match.group(2)
            line = line[: match.start()] + match.group(1) + line[match.end() :]


def code_spans(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, content) of every inline code span outside fences."""
    for number, line in prose_lines(path.read_text()):
        for match in CODE_SPAN.finditer(line):
            yield number, match.group(2).strip()


def where(path: Path, number: int, root: Path = ROOT) -> str:
    return f"{path.relative_to(root).as_posix()}:{number}"


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with ``path``'s local links and fragments."""
    problems = []
    for number, target in links(path):
        here = where(path, number, root)
        if not target or SCHEME.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        file_part = unquote(file_part)
        if file_part.startswith("/"):
            linked = root / file_part.lstrip("/")
        elif file_part:
            linked = path.parent / file_part
        else:
            linked = path
        linked = linked.resolve()
        if not linked.is_relative_to(root):
            problems.append(f"{here}: {target}: outside the repository")
        elif not linked.exists():
            problems.append(f"{here}: {target}: no such file")
        elif (
            fragment
            and linked.suffix == ".md"
            and unquote(fragment) not in anchors(linked)
        ):
            problems.append(f"{here}: {target}: no such heading")
    return problems


def test_the_docs_are_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOCS}
    assert {"README.md", "docs/deploy.md", "docs/operations.md"} <= names


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("`/healthz`, `/readyz` and `/livez`", "healthz-readyz-and-livez"),
        ("9.1 `seq`: per-room, gap-free", "91-seq-per-room-gap-free"),
        ("The `internal_error` code: a note", "the-internal_error-code-a-note"),
        ("8. The first staff account", "8-the-first-staff-account"),
        ("Reconnect storm (`storm`)", "reconnect-storm-storm"),
        ("A **bold** [link](x.md) → here", "a-bold-link--here"),
    ],
)
def test_slug_follows_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_duplicate_headings_get_numbered(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Notes\n\n## Notes\n\n```md\n# Notes\n```python\n```\n\n### Notes\n"
    )
    assert anchors(page) == {"notes", "notes-1", "notes-2"}


def test_broken_links_are_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n"
        "[up](#title) [gone](#missing) `[code](#no)` [web](https://x.org/#y)\n"
        "[there](other.md#other-page) [not there](other.md#title)\n"
        "[![badge](missing.svg)](other.md) [out](../elsewhere.md)\n"
        "```\n[fenced](#nowhere)\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "page.md:3: #missing: no such heading",
        "page.md:4: other.md#title: no such heading",
        "page.md:5: missing.svg: no such file",
        "page.md:5: ../elsewhere.md: outside the repository",
    ]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_local_links_and_anchors_resolve(path: Path) -> None:
    assert broken_links(path) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_link_points_at_a_placeholder(path: Path) -> None:
    placeholders = [
        f"{where(path, number)}: {target}"
        for number, target in links(path)
        if any(word in target.lower() for word in PLACEHOLDERS)
    ]
    assert placeholders == []


@functools.cache
def markdown_names() -> frozenset[str]:
    """Names of the repository's Markdown files, and of those a run writes
    (named somewhere with their generated folder, e.g. ``soak/results/``)."""
    found = {path.name for path in ROOT.glob("*.md")}
    for folder in REPO_DIRS:
        found |= {path.name for path in (ROOT / folder).rglob("*.md")}
    written = re.compile("(?:" + "|".join(map(re.escape, GENERATED)) + r")([\w-]+\.md)")
    for doc in DOCS:
        found |= set(written.findall(doc.read_text()))
    return frozenset(found)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_document_cites_a_file_from_elsewhere(path: Path) -> None:
    """Every Markdown file a document names is one of the repository's, and
    no relative path leads out of it: a reader has only the repository."""
    text = path.read_text()
    elsewhere = sorted(set(MARKDOWN_NAME.findall(text)) - markdown_names())
    elsewhere += [
        climbing
        for climbing in CLIMBING_PATH.findall(text)
        if not (path.parent / climbing).resolve().is_relative_to(ROOT)
    ]
    assert elsewhere == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_repository_paths_in_code_spans_exist(path: Path) -> None:
    missing = [
        f"{where(path, number)}: {span}"
        for number, span in code_spans(path)
        if re.fullmatch(r"[\w.-]+/[\w./-]*", span)
        and span.split("/", 1)[0] in REPO_DIRS
        and not (span.rstrip("/") + "/").startswith(GENERATED)
        and not (ROOT / span).exists()
    ]
    assert missing == []


def code_text() -> str:
    """Everything that reads the environment or names a setting."""
    files = [ROOT / "manage.py", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("core", "backend", "tests", "bench", "soak"):
        files += (ROOT / folder).rglob("*.py")
    files += (ROOT / ".do").glob("*.yaml")
    return "\n".join(path.read_text() for path in files)


def test_every_variable_the_docs_name_is_read_by_the_code() -> None:
    code = code_text()
    unknown = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in DOCS
        for name in set(ENV_VAR.findall(path.read_text()))
        if name not in NOT_SETTINGS and name not in code
    )
    assert unknown == []


def test_every_metric_the_docs_name_is_exported() -> None:
    # Importing the modules registers the metrics they read when scraped.
    from core import db, fanout, liveness, metrics, output  # noqa: F401

    exported = {family.name for family in metrics.REGISTRY.collect()}
    exported |= {name for name, *_ in metrics._READINGS}
    exported.add("switchboard_metrics_fleet_complete")  # made per scrape
    unknown = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in DOCS
        for name in set(METRIC.findall(path.read_text()))
        if re.sub(r"_(total|bucket|sum|count)$", "", name) not in exported
        and name not in exported
    )
    assert unknown == []


def alert_rules(spec: Any) -> set[str]:
    """Every alert rule anywhere in an App Spec."""
    if isinstance(spec, dict):
        rules = {alert["rule"] for alert in spec.get("alerts", [])}
        return rules.union(*(alert_rules(value) for value in spec.values()))
    if isinstance(spec, list):
        return set().union(*(alert_rules(item) for item in spec))
    return set()


def test_operations_has_a_playbook_per_alert() -> None:
    rules = alert_rules(yaml.safe_load((ROOT / ".do" / "app.yaml").read_text()))
    assert "RESTART_COUNT" in rules
    guide = ROOT / "docs" / "operations.md"
    headings = [
        match.group(2)
        for _, line in prose_lines(guide.read_text())
        if (match := HEADING.match(line)) and match.group(1) == "###"
    ]
    missing = [rule for rule in sorted(rules) if not any(rule in h for h in headings)]
    assert missing == []
    assert "Liveness restarts" in headings
