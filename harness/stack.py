"""App Platform on your laptop: ``make stack N=2``.

Starts PostgreSQL, Redis and N instances of the project that share them, as
App Platform runs several identical instances behind its load balancer.  The
database is migrated once, before any instance starts.  Ctrl-C or SIGTERM
stops the instances first, then Redis, then PostgreSQL, and removes every
temporary directory.

    python -m harness.stack --instances 2 [--port 8001] [--tls]
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from harness.app import AppProcess, manage
from harness.deployment import Deployment, prepare_database
from harness.postgres import PostgresCluster
from harness.process import ServiceFailed, ServiceUnavailable
from harness.redis_server import RedisServer
from harness.tls import make_tls_files

MAX_INSTANCES = 16
WATCH_INTERVAL_SECONDS = 1.0


class _Stop(Exception):
    """Raised in the main thread by SIGINT or SIGTERM."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    _ignore_signals()
    raise _Stop(signal.Signals(signum).name)


def _ignore_signals() -> None:
    """Let the orderly shutdown finish: each of its steps has a deadline."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _instance_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_INSTANCES:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MAX_INSTANCES}, not {text!r}"
        )
    return count


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if port != 0 and not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be 0 (any free port) or from 1024 to 65535, not {text!r}"
        )
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; exit with a usage message when it is wrong."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.stack",
        description="Run Redis, PostgreSQL and N instances of Switchboard "
        "sharing them, as on App Platform. Ctrl-C stops everything.",
    )
    parser.add_argument(
        "-n",
        "--instances",
        type=_instance_count,
        default=2,
        help=f"how many app instances, 1 to {MAX_INSTANCES} (default: 2)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=0,
        help="port of the first instance; the others take the next ones "
        "(default: 0, free ports)",
    )
    parser.add_argument(
        "--server",
        choices=("daphne", "uvicorn"),
        default="daphne",
        help="ASGI server (default: daphne, as App Platform runs it)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve Redis over TLS only (rediss://), verified through "
        "REDIS_CA_CERT, as DigitalOcean's managed Redis is",
    )
    args = parser.parse_args(argv)
    if args.port and args.port + args.instances - 1 > 65535:
        parser.error(f"--port {args.port} leaves no room for {args.instances} ports")
    return args


def _prepare_database(env: dict[str, str]) -> None:
    """Migrate, collect static files and ensure the lobby."""
    # DJANGO_DEBUG=0 serves static files from STATIC_ROOT, as the App
    # Platform build leaves it.
    manage("collectstatic", "--noinput", env=env)
    prepare_database(env, rooms={"lobby": "Lobby"})


def _print_summary(
    pg: PostgresCluster,
    redis: RedisServer,
    apps: list[AppProcess],
    database_url: str,
) -> None:
    lines = [
        "",
        "Switchboard stack: App Platform on your laptop",
        f"  PostgreSQL  {database_url}  (log {pg.log_path})",
        f"  Redis       {redis.url}  (log {redis.log_path})",
    ]
    for number, app in enumerate(apps, start=1):
        lines.append(
            f"  instance {number:<2} {app.url}/  {app.ws_url('/ws/rooms/lobby/')}"
            f"  ({app.server}, pid {app.pid}, log {app.log_path})"
        )
    lines += [
        "Every instance shares Redis and PostgreSQL; there is no load balancer,",
        "so open any of them. Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    """Start everything in ``stack``, print where it is, then watch it."""
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-stack-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)

    # Entered in this order, so closed in reverse: instances, Redis, Postgres.
    pg = stack.enter_context(PostgresCluster())
    tls = make_tls_files(workdir / "tls") if args.tls else None
    redis = stack.enter_context(RedisServer(password=secrets.token_hex(16), tls=tls))
    database_url = pg.create_database("switchboard")
    env = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "0",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
    }
    if tls is not None:
        env["REDIS_CA_CERT"] = tls.ca_pem  # PEM text, as App Platform binds it
    _prepare_database(env)

    # A shell's SWITCHBOARD_* variables reach the instances, as make run's do.
    deployment = Deployment(env, log_dir=workdir, isolate=False)
    stack.callback(deployment.close)
    apps = [
        deployment.add(
            f"instance-{number}",
            server=args.server,
            port=args.port + number - 1 if args.port else None,
        )
        for number in range(1, args.instances + 1)
    ]
    deployment.start()
    _print_summary(pg, redis, apps, database_url)

    while True:
        for app in apps:
            app.check_alive()
        # A watch for crashed instances, not synchronisation: nothing waits
        # on it, and a signal interrupts it at once.
        time.sleep(WATCH_INTERVAL_SECONDS)


def main(argv: list[str] | None = None) -> int:
    """Run the stack until a signal; return the process exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with contextlib.ExitStack() as stack:
            try:
                run(args, stack)
            finally:
                _ignore_signals()
                print("Stopping: instances, then Redis, then PostgreSQL…", flush=True)
    except _Stop:
        print("Stopped.", flush=True)
        return 0
    except (ServiceUnavailable, ServiceFailed) as exc:
        print(f"stack: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
