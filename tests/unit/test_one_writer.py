"""One writer and one rule (issue 20, point 3), kept true by reading core/.

Every write of tokens, users, rooms, memberships and messages is in
``core.services``; every decision about a right (signed in, staff) is in
``core.access``. These tests parse core/ and name each call that breaks
that, unless it is listed below with the reason it is not a write or not a
rule.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"

# Modules that write: the services layer (a module or a package).
WRITERS = ("core/services.py", "core/services/")
# Generated schema changes; they write no rows.
SKIPPED = ("core/migrations/",)

# Manager and queryset methods that write rows, and model/form methods that do.
QUERY_WRITES = {
    "create",
    "get_or_create",
    "update_or_create",
    "bulk_create",
    "bulk_update",
    "create_user",
    "create_superuser",
    "delete",
    "update",
}
OBJECT_WRITES = {"save", "delete", "set_password"}

# (module, function, method): why it is not a write of ours.
NOT_WRITES: dict[tuple[str, str, str], str] = {}

RIGHTS = {"is_authenticated", "is_staff", "is_superuser"}
RULES = "core/access.py"

# (module, function, attribute): why reading it there decides no right.
NOT_RULES = {
    ("core/services.py", "ensure_user", "is_staff"): "ensure_user only ever "
    "raises an operator-given flag; it writes the right, it does not check it",
    ("core/consumers.py", "RoomSession._open", "is_authenticated"): "the "
    "username for logs, and the user's own group (revocations) to join",
    ("core/consumers.py", "RoomSession._admit", "is_authenticated"): "whose "
    "connection budget a handshake spends (per user or per address)",
    ("core/consumers.py", "RoomSession._grant", "is_authenticated"): "which "
    "credential the warden re-checks; the right was decided by the handshake",
    ("core/limits.py", "owner", "is_authenticated"): "whose rate budget a "
    "request spends, not whether it may",
    ("core/middleware.py", "_annotate_log", "is_authenticated"): (
        "the user id for the access log"
    ),
}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(CORE.rglob("*.py")):
        name = path.relative_to(CORE.parent).as_posix()
        if not name.startswith(SKIPPED):
            yield name, ast.parse(path.read_text(), filename=name)


def with_functions(tree: ast.Module) -> Iterator[tuple[str, ast.AST]]:
    """Each node with the qualified name of the function around it ("" at
    module level)."""

    def walk(node: ast.AST, scope: list[str]) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            yield ".".join(scope), child
            named = isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            )
            yield from walk(child, [*scope, child.name] if named else scope)

    return walk(tree, [])


def through_objects(node: ast.expr) -> bool:
    """True if ``node`` is a chain through a model manager: ``X.objects...``."""
    while True:
        if isinstance(node, ast.Attribute):
            if node.attr == "objects":
                return True
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            return False


def writes(name: str, tree: ast.Module) -> Iterator[tuple[str, str, int]]:
    for function, node in with_functions(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method, receiver = node.func.attr, node.func.value
        if (method in QUERY_WRITES and through_objects(receiver)) or (
            method in OBJECT_WRITES and not through_objects(receiver)
        ):
            yield function, method, node.lineno


def rights(tree: ast.Module) -> Iterator[tuple[str, str, int]]:
    for function, node in with_functions(tree):
        if isinstance(node, ast.Attribute) and node.attr in RIGHTS:
            yield function, node.attr, node.lineno


def test_only_the_services_write():
    found = [
        f"{name}:{line} {function}() calls .{method}()"
        for name, tree in modules()
        if not name.startswith(WRITERS)
        for function, method, line in writes(name, tree)
        if (name, function, method) not in NOT_WRITES
    ]
    assert found == [], "write through core.services instead:\n" + "\n".join(found)


def test_only_access_decides_rights():
    found = [
        f"{name}:{line} {function}() reads .{attribute}"
        for name, tree in modules()
        if name != RULES
        for function, attribute, line in rights(tree)
        if (name, function, attribute) not in NOT_RULES
    ]
    assert found == [], "ask core.access instead:\n" + "\n".join(found)


def test_every_exception_still_applies():
    """An entry whose code went away must go too, or it would excuse the
    next write or rule put in the same place."""
    present_writes = {
        (name, function, method)
        for name, tree in modules()
        for function, method, _ in writes(name, tree)
    }
    present_rights = {
        (name, function, attribute)
        for name, tree in modules()
        for function, attribute, _ in rights(tree)
    }
    assert set(NOT_WRITES) - present_writes == set()
    assert set(NOT_RULES) - present_rights == set()
