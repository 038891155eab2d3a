"""Command-line options of ``python -m soak``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from soak import config

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m soak",
        description=(
            "Soak Switchboard: two Daphne instances sharing Redis and PostgreSQL, "
            "about 140 WebSocket clients with mixed traffic (30 rooms and a hot "
            "room, reconnect churn, history paging, typing, a private room's "
            "member removed and added back about every minute), Redis restarted "
            "once at 40% of the run. Fails (exit status 1) on a lost or "
            "duplicated acknowledged message, unexpected error frames or closes, "
            "ERROR log lines or tracebacks, memory still growing over the last "
            "half, or descriptors and connections that do not level off "
            "(docs/reliability.md)."
        ),
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=config.DEFAULT_MINUTES,
        help="minutes of traffic, not counting start-up and the drain "
        f"(default {config.DEFAULT_MINUTES:g}; at least 1)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR,
        help="directory for results.json, results.md, soak.png and logs/ "
        "(default: soak/results)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=config.DEFAULT_SEED,
        help=f"seed of every random choice (default {config.DEFAULT_SEED})",
    )
    p.add_argument(
        "--markdown",
        nargs="?",
        const=RESULTS_DIR / "results.json",
        type=Path,
        metavar="JSON",
        help="print the Markdown tables of a results file (default: "
        "soak/results/results.json) and exit; runs nothing",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.markdown is not None:
        from soak import report

        if not args.markdown.is_file():
            p.error(f"--markdown: no results file at {args.markdown}")
        print(report.markdown(json.loads(args.markdown.read_text())), end="")
        return 0
    if args.minutes < 1:
        p.error("--minutes must be at least 1 (the run needs a first and a last half)")
    from soak import runner

    return runner.run(args.minutes, args.output, args.seed)
