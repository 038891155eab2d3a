"""``make mutate``: mutation testing of the rule modules (docs/testing.md).

mutmut copies the tree to ``mutants/``, changes the code one small way at a
time (a ``<`` for a ``<=``, a ``True`` for a ``False``, a string emptied) and
runs the unit tests that reach the changed function. A mutant the tests pass
"survived": the rule can be broken without any test noticing.

Which functions are mutated is listed here, not in mutmut's configuration
(which names whole files), so that the run stays bounded: the rules, not the
plumbing around them. What is left out, and why, is in docs/testing.md.

    python -m tests.support.mutation            # run, then report
    python -m tests.support.mutation --report   # report the last run
"""

import argparse
import fnmatch
import os
import re
import subprocess
import sys
import time

# Goal of issue 22, and the bar the run must clear.
GOAL_PERCENT = 90.0

# mutmut names a mutant <module>.x_<function>__mutmut_<n>, or for a method
# <module>.xǁ<Class>ǁ<method>__mutmut_<n>.
RULES: dict[str, list[str]] = {
    "protocol parsing": [
        f"core.protocol.x_{name}__*"
        for name in (
            "_reject_constant",
            "_parse_int",
            "_depth_exceeds",
            "decode_json_object",
            "_short",
            "parse_client_frame",
            "_valid_client_id_or_none",
            "validate_body",
            "validate_client_id",
            "validate_seq",
            "validate_target",
            "validate_limit",
            "_parse_send",
            "_parse_edit",
            "_parse_delete",
            "_parse_history",
            "parse_seq_text",
            "parse_resume_after",
        )
    ],
    "access rules": ["core.access.*"],
    "origin policy": ["core.auth.x_header__*", "core.auth.x_origin_allowed__*"],
    "rate limiting": [
        "core.ratelimit.*",
        "core.limits.x_owner__*",
        "core.limits.x__key__*",
        "core.limits.x__counted__*",
        "core.limits.xǁ_Memoryǁ*",
        *(
            f"core.throttling.x_{name}__*"
            for name in (
                "_refused",
                "_username_ident",
                "_spend",
                "check_attempt",
                "check_password_check",
                "check_new_account",
                "check_write",
                "_hashing_semaphore",
            )
        ),
        "core.throttling.xǁRefusalǁ*",
        "core.services.x_check_room_has_space__*",
    ],
    "store path": [
        "core.services.x_store_message__*",
        "core.services.x__check_signed_in__*",
        "core.services.x__check_can_post__*",
        "core.services.x__original__*",
        "core.services.x_frame_for__*",
    ],
    "delivery decisions": [
        "core.servers.backpressure.x_text_frame__*",
        "core.servers.backpressure.x__declining__*",
        "core.servers.backpressure.x__sansio_offer__*",
        "core.servers.backpressure.x__asyncio__*",
        "core.output.*",
        "core.delivery.*",
        "core.consumers.xǁRoomConsumerǁcarry_out__*",
        "core.consumers.xǁRoomConsumerǁ_too_slow__*",
        "core.consumers.xǁRoomConsumerǁ_close_too_slow__*",
    ],
}

KILLED = {"killed", "timeout", "caught by type check"}
NOT_COUNTED = {"skipped"}
LINE = re.compile(r"^\s*(?P<name>\S+): (?P<status>.+)$")


def selected(name: str) -> str | None:
    """The rule group a mutant belongs to, or None if it is not run."""
    for group, patterns in RULES.items():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return group
    return None


def mutmut(*args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        capture_output=capture,
        text=True,
        check=False,
    )


def results() -> dict[str, str]:
    """Every selected mutant of the last run, and what became of it."""
    listing = mutmut("results", "--all", "true")
    if listing.returncode != 0:
        sys.exit(f"mutmut results failed:\n{listing.stderr}")
    found = {}
    for line in listing.stdout.splitlines():
        match = LINE.match(line)
        if match and selected(match["name"]):
            found[match["name"]] = match["status"].strip()
    return found


def report(found: dict[str, str]) -> bool:
    """Print the score per rule group and every mutant not killed; True if
    the goal is met."""
    counted = {n: s for n, s in found.items() if s not in NOT_COUNTED}
    if not counted:
        print("no results: run `make mutate` first")
        return False
    by_group: dict[str, list[str]] = {group: [] for group in RULES}
    for name, status in counted.items():
        by_group[selected(name)].append(status)
    print(f"{'rule group':<22} {'mutants':>8} {'killed':>8} {'score':>7}")
    for group, mine in by_group.items():
        killed = sum(s in KILLED for s in mine)
        score = 100.0 * killed / len(mine) if mine else 100.0
        print(f"{group:<22} {len(mine):>8} {killed:>8} {score:>6.1f}%")
    killed = sum(status in KILLED for status in counted.values())
    score = 100.0 * killed / len(counted)
    print(f"{'all':<22} {len(counted):>8} {killed:>8} {score:>6.1f}%")
    left = sorted(n for n, s in counted.items() if s not in KILLED)
    if left:
        print(f"\nnot killed ({len(left)}); see one with `.venv/bin/mutmut show NAME`:")
        for name in left:
            print(f"  {name}: {counted[name]}")
    met = score >= GOAL_PERCENT
    verdict = "met" if met else "NOT met"
    print(f"\n{score:.1f}% killed; goal {GOAL_PERCENT:.0f}%: {verdict}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--report", action="store_true", help="report the last run; run nothing"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="mutants at once"
    )
    options = parser.parse_args()
    if not options.report:
        patterns = [p for group in RULES.values() for p in group]
        started = time.monotonic()
        run = mutmut(
            "run", "--max-children", str(options.jobs), *patterns, capture=False
        )
        minutes = (time.monotonic() - started) / 60
        print(f"\nmutmut ran for {minutes:.1f} min (exit {run.returncode})")
    return 0 if report(results()) else 1


if __name__ == "__main__":
    sys.exit(main())
