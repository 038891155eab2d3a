"""A deployment: N instances of the project sharing one database (and Redis).

This is what App Platform runs: identical instances behind a load balancer,
configured only by their environment (README, "Configuration").  The
integration and browser tiers, ``make stack`` and the soak start their
instances through ``Deployment``; ``prepare_database`` migrates a database and
makes its users with ``manage.py ensure_user``, and everything else a test
needs (tokens, rooms, messages) goes through the HTTP API, as users do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

from harness import http
from harness.app import AppProcess, Server, ensure_room, ensure_users, manage


def prepare_database(
    env: Mapping[str, str],
    *,
    usernames: Sequence[str] = (),
    password: str = "",
    rooms: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> None:
    """Migrate the database ``env`` names; create users and public rooms.

    ``rooms`` maps slugs to names (``{"lobby": "Lobby"}``).
    """
    manage("migrate", "--noinput", env=env, timeout=timeout)
    ensure_users(env, list(usernames), password, timeout=timeout)
    for slug, name in (rooms or {}).items():
        ensure_room(env, slug, name)


class Deployment:
    """Instances sharing ``env``; users with ``password``; their API tokens.

    ``count`` instances named ``<name>0``, ``<name>1``… are created at once
    (``start()`` boots them); ``launch``/``launch_each`` add more, already
    started.  With ``log_dir`` each instance logs to ``<log_dir>/<name>.log``;
    without it, to a temporary directory removed on close.  ``isolate``
    blanks the ``SWITCHBOARD_*`` variables of our own environment that
    ``env`` does not set; ``make stack`` passes them through instead.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        usernames: Sequence[str] = (),
        password: str = "",
        name: str = "app",
        count: int = 0,
        log_dir: Path | None = None,
        isolate: bool = True,
    ) -> None:
        self.env = dict(env)
        self.isolate = isolate
        self.usernames = list(usernames)
        self.password = password
        self.name = name
        self.log_dir = log_dir
        self.instances: list[AppProcess] = []
        self.tokens: dict[str, str] = {}
        for index in range(count):
            self.add(f"{name}{index}")

    # --- instances ---------------------------------------------------------

    def instance_env(
        self, overrides: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The whole environment of an instance: ``env`` plus ``overrides``."""
        env = {**self.env, **(overrides or {})}
        if not self.isolate:
            return env
        # Limits and flags from the developer's shell must not leak in:
        # every value an instance sees is set here or is the default.
        for key in os.environ:
            if key.startswith("SWITCHBOARD_") and key not in env:
                env[key] = ""
        return env

    def add(
        self,
        name: str,
        env: Mapping[str, str] | None = None,
        *,
        server: Server = "daphne",
        application: str = "backend.asgi:application",
        port: int | None = None,
    ) -> AppProcess:
        """A new instance with ``env`` added to the deployment's; not started."""
        app = AppProcess(
            self.instance_env(env),
            server=server,
            application=application,
            name=name,
            port=port,
            log_path=self.log_dir / f"{name}.log" if self.log_dir else None,
        )
        self.instances.append(app)
        return app

    def launch_each(
        self,
        envs: Mapping[str, Mapping[str, str]],
        server: Server = "daphne",
        application: str = "backend.asgi:application",
    ) -> list[AppProcess]:
        """Start an instance per name with its own additions to ``env``, all
        at once; return them once each answers /healthz.

        ``application``: a test-only wrapper (tests/support/faults.py).
        """
        apps = [
            self.add(name, env, server=server, application=application)
            for name, env in envs.items()
        ]
        start_all(apps)
        return apps

    def start(self) -> Self:
        """Start every instance not running, in parallel; wait for each."""
        start_all([app for app in self.instances if not app.running])
        return self

    def remove(self, app: AppProcess) -> None:
        """Close ``app`` and forget it."""
        app.close()
        if app in self.instances:
            self.instances.remove(app)

    def close(self) -> None:
        for app in list(self.instances):
            self.remove(app)

    def url(self, index: int = 0) -> str:
        """Base URL of instance ``index`` (wrapping, so 1 works with one)."""
        return self.instances[index % len(self.instances)].url

    def logs(self) -> str:
        """Every instance's log, for a failure report."""
        return "\n".join(
            f"----- {app.name} ({app.log_path}) -----\n{app.log_text()}"
            for app in self.instances
        )

    # --- the HTTP API, as the deployment's users -------------------------------

    def token(self, user: str, *, instance: int = 0) -> str:
        """The user's API token, signed in once through the API."""
        if user not in self.tokens:
            self.tokens[user] = http.sign_in(self.url(instance), user, self.password)
        return self.tokens[user]

    def fetch_tokens(self, *apps: AppProcess) -> dict[str, str]:
        """Sign every user in through ``POST /api/auth/token/`` (once).

        Django runs sync views on one thread per process, and hashing the
        password is the slow part, so the requests are spread over ``apps``.
        """
        apps = apps or tuple(self.instances)
        missing = [name for name in self.usernames if name not in self.tokens]

        def sign_in(job: tuple[int, str]) -> tuple[str, str]:
            number, username = job
            app = apps[number % len(apps)]
            return username, http.sign_in(app, username, self.password)

        with ThreadPoolExecutor(max_workers=2 * len(apps)) as pool:
            self.tokens.update(pool.map(sign_in, enumerate(missing)))
        return self.tokens

    def api(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        user: str | None = None,
        instance: int = 0,
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        """Call the JSON API on ``instance`` as ``user`` (by token)."""
        token = self.token(user, instance=instance) if user is not None else None
        return http.api(
            self.url(instance), method, path, body, token=token, expect=expect
        )

    def create_room(
        self, slug: str, *, owner: str = "", name: str = "", private: bool = False
    ) -> str:
        """A room made by ``owner`` (default: the first user); its slug."""
        body = {
            "name": name or slug.replace("-", " ").title(),
            "slug": slug,
            "is_private": private,
        }
        self.api("POST", "/api/rooms/", body, user=owner or self.usernames[0])
        return slug

    def post(self, slug: str, body: str, *, user: str, instance: int = 0) -> int:
        """Post a message through the API; return its seq."""
        path = f"/api/rooms/{slug}/messages/"
        frame = self.api("POST", path, {"body": body}, user=user, instance=instance)
        return int(frame["seq"])

    def edit(
        self, slug: str, seq: int, body: str, *, user: str, instance: int = 0
    ) -> dict[str, Any]:
        """Edit message ``seq`` through the API; return the edit event."""
        path = f"/api/rooms/{slug}/messages/{seq}/"
        return self.api("PATCH", path, {"body": body}, user=user, instance=instance)

    def delete(
        self, slug: str, seq: int, *, user: str, instance: int = 0
    ) -> dict[str, Any]:
        """Delete message ``seq`` through the API; return the delete event."""
        path = f"/api/rooms/{slug}/messages/{seq}/"
        return self.api("DELETE", path, user=user, instance=instance)

    def messages(self, slug: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The room's latest messages, as stored."""
        page = self.api("GET", f"/api/rooms/{slug}/messages/?limit={limit}")
        return list(page["messages"])

    def view(self, slug: str) -> list[list[object]]:
        """The room as the database has it, as a page shows it:
        ``[seq, text, state]`` per message, state "", "edited" or "deleted";
        edits and deletions are no rows of their own."""
        rows: list[list[object]] = []
        for message in self.messages(slug):
            if "kind" in message:
                continue
            if message.get("deleted"):
                rows.append([message["seq"], "message deleted", "deleted"])
            else:
                state = "edited" if "edited_at" in message else ""
                rows.append([message["seq"], message["body"], state])
        return rows

    def ensure_staff(self, username: str) -> None:
        """A staff user (not a superuser) with the deployment's password."""
        ensure_users(self.env, [username], self.password, staff=True)


class Launcher:
    """Instances of one scope (a test, a module) of a deployment, started in
    parallel and closed together at the end of that scope."""

    def __init__(
        self, deployment: Deployment, watch: list[AppProcess] | None = None
    ) -> None:
        self.deployment = deployment
        self.apps: list[AppProcess] = []
        # Somewhere to list live instances, e.g. for log tails on failure.
        self.watch = watch if watch is not None else []

    def launch(
        self, *names: str, env: Mapping[str, str] | None = None
    ) -> list[AppProcess]:
        """Start one instance per name, all at once; return them ready."""
        return self.launch_each({name: env or {} for name in names})

    def launch_each(
        self,
        envs: Mapping[str, Mapping[str, str]],
        server: Server = "daphne",
        application: str = "backend.asgi:application",
    ) -> list[AppProcess]:
        """``Deployment.launch_each``, instance names prefixed with the
        deployment's name; closed with this launcher."""
        prefix = self.deployment.name
        apps = [
            self.deployment.add(
                f"{prefix}-{name}", env, server=server, application=application
            )
            for name, env in envs.items()
        ]
        self.apps += apps
        self.watch += apps
        start_all(apps)
        return apps

    def close(self) -> None:
        for app in self.apps:
            self.deployment.remove(app)
            if app in self.watch:
                self.watch.remove(app)


def start_all(apps: Sequence[AppProcess]) -> None:
    """Launch every instance, then wait for each: they boot in parallel."""
    for app in apps:
        app.start(wait=False)
    for app in apps:
        app.wait_ready()
