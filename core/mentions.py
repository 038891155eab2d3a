"""The one rule for ``@name`` mentions (docs/protocol.md, section 18).

A mention is ``@`` at the start of the body or after a character that is
not a username character, followed by a run of username characters
(``[\\w.@+-]``, Django's), less any trailing dots: "@bob." mentions bob.
Names compare case-insensitively (lowercased). The browser copies this rule
in ``core/static/core/js/mentions.js``; tests/unit/test_mentions.py runs one
table of cases through both, and through ``db_needle`` on the database.
"""

import re

# Django's username characters (UnicodeUsernameValidator).
NAME_CHARS = r"\w.@+-"
MENTION_RE = re.compile(rf"(?<![{NAME_CHARS}])@([{NAME_CHARS}]+)")


def mentioned(body: str) -> set[str]:
    """The lowercased usernames ``body`` mentions."""
    names = set()
    for match in MENTION_RE.finditer(body):
        name = match.group(1).rstrip(".")
        if name:
            names.add(name.lower())
    return names


def mentions(body: str, username: str) -> bool:
    """True if ``body`` mentions ``username``."""
    return username.lower() in mentioned(body)


def db_needle(username: str) -> str | None:
    """Text every body that mentions ``username`` contains, for the
    database to narrow with (``__icontains``) before ``mentions`` decides;
    None if no body can mention it (a name ending in a dot: the dot would
    be read as punctuation).

    Not a regular expression: PostgreSQL's ``\\w`` follows the cluster's
    locale (in a C-locale cluster "é" is no word character, so "é@bob"
    would count), while this rule is Python's Unicode one.
    """
    if not username or username.endswith("."):
        return None
    return "@" + username
