"""Command-line options of ``python -m bench`` and what they select."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import config, markdown, runner
from bench.runner import RESULTS_DIR, StackPlan
from bench.targets import LIST_LAYER

SCENARIOS = ("fanout", "rooms", "idle", "handshake", "send", "storm", "tradeoffs")
# The baselines neither store nor resume: these measure Switchboard alone.
SWITCHBOARD_ONLY = ("send", "storm", "tradeoffs")
TARGETS = ("switchboard", "tutorial", "raw")
SERVERS = ("daphne", "uvicorn", "websockets")
SERVERS_OF = {
    "switchboard": ("daphne", "uvicorn"),
    "tutorial": ("daphne",),
    "raw": ("websockets",),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark Switchboard against the Channels-tutorial consumer and a "
            "raw websockets + Redis pub/sub broadcaster, 2 instances each, on "
            "loopback. With no options: every scenario on every target "
            "(under 15 minutes on 2 cores); writes bench/results/latest.json "
            "and PNG plots."
        ),
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all). 'handshake' "
        "opens connections to one instance and reports handshakes/s and server "
        "CPU per handshake (Switchboard's with token auth, a private room, a "
        "?after= replay and presence). 'send' and 'storm' (instance B gets "
        "SIGTERM, its clients resume on A) are Switchboard only; 'tradeoffs' "
        "measures permessage-deflate and uvloop on uvicorn",
    )
    p.add_argument(
        "--target",
        action="append",
        choices=TARGETS,
        help="run only this target (repeatable; default: all)",
    )
    p.add_argument(
        "--server",
        action="append",
        choices=SERVERS,
        help="run only on this server (repeatable; default: each target's own: "
        "switchboard on daphne and uvicorn, tutorial on daphne, raw on websockets)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and short windows, for iteration (not comparable)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also sample instance 0 of each stack with py-spy during one extra "
        "step at the largest fanout at 50 msg/s (1000 subscribers) and at the "
        "highest send rate (needs ptrace rights: root)",
    )
    p.add_argument(
        "--markdown",
        nargs="?",
        const=RESULTS_DIR / "latest.json",
        type=Path,
        metavar="JSON",
        help="print Markdown tables of a results file (default: "
        "bench/results/latest.json) and exit; runs nothing",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="directory for latest.json and the plots (default: bench/results "
        "for a full run, bench/results/partial for a selection or --quick)",
    )
    return p


def select(args: argparse.Namespace, p: argparse.ArgumentParser) -> list[StackPlan]:
    """The stacks to start, in order; ``p.error`` on an impossible selection."""
    scenarios = tuple(args.scenario or SCENARIOS)
    targets = args.target or list(TARGETS)
    servers = args.server
    for target in targets:
        if servers and not set(servers) & set(SERVERS_OF[target]):
            p.error(
                f"--target {target} runs on {' or '.join(SERVERS_OF[target])}, "
                f"not on {', '.join(servers)}"
            )
    only_switchboard_chosen = args.scenario and set(args.scenario) <= set(
        SWITCHBOARD_ONLY
    )
    if only_switchboard_chosen and "switchboard" not in targets:
        p.error(
            "--scenario send, storm and tradeoffs measure Switchboard only: "
            "add --target switchboard"
        )
    base = tuple(s for s in scenarios if s != "tradeoffs")
    tradeoffs = "tradeoffs" in scenarios
    stacks = []
    for target in targets:
        for server in SERVERS_OF[target]:
            if servers and server not in servers:
                continue
            chosen = tuple(
                s for s in base if s not in SWITCHBOARD_ONLY or target == "switchboard"
            )
            stacks.append(
                StackPlan(
                    target=target,
                    server=server,
                    variant="",
                    scenarios=chosen,
                    deflate=tradeoffs
                    and target == "switchboard"
                    and server == "uvicorn",
                    negotiation=tradeoffs,
                )
            )
    if tradeoffs and ("switchboard", "uvicorn") in {
        (s.target, s.server) for s in stacks
    }:
        stacks.append(
            StackPlan(
                target="switchboard",
                server="uvicorn",
                variant="asyncio loop",
                scenarios=("fanout",),
            )
        )
    if "fanout" in base and ("switchboard", "daphne") in {
        (s.target, s.server) for s in stacks
    }:
        stacks.append(
            StackPlan(
                target="switchboard",
                server="daphne",
                variant=LIST_LAYER,
                scenarios=("fanout",),
            )
        )
    stacks = [s for s in stacks if s.scenarios or s.deflate or s.negotiation]
    if not stacks:
        p.error("nothing to run for this selection")
    return stacks


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.markdown is not None:
        if not args.markdown.is_file():
            p.error(f"--markdown: no results file at {args.markdown}")
        print(markdown.render(args.markdown), end="")
        return 0
    stacks = select(args, p)
    full = not (args.scenario or args.target or args.server or args.quick)
    output = args.output or (RESULTS_DIR if full else RESULTS_DIR / "partial")
    plan = config.QUICK if args.quick else config.FULL
    description = (
        "full run" if full else "selection" + (" (quick)" if args.quick else "")
    )
    return runner.run(
        plan, stacks, output_dir=output, profile=args.profile, description=description
    )
