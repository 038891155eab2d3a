"""A rehearsal of an App Platform deploy of .do/app.yaml, on this machine.

It does what the platform does, in order: install ``requirements.txt`` into a
fresh virtualenv, run the build's ``collectstatic`` with no runtime variables,
run the PRE_DEPLOY job's command with the job's environment, then start the
web service's ``run_command`` twice (two instances) with the variables the
platform injects, bound to a throwaway PostgreSQL and a TLS-only Redis with a
password and a private CA, like a managed Valkey cluster.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import websockets
import yaml

from harness.app import ENSURE_USER_PASSWORD
from harness.http import request
from harness.postgres import PostgresCluster
from harness.process import ServiceUnavailable, free_port
from harness.redis_server import RedisServer
from harness.tls import make_tls_files
from harness.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / ".do" / "app.yaml").read_text())
APP_DOMAIN = "switchboard-rehearsal.ondigitalocean.app"
SECRET_KEY = "rehearsal-" + "k" * 60
BUILD_SCOPES = {"BUILD_TIME", "RUN_AND_BUILD_TIME"}
RUN_SCOPES = {"RUN_TIME", "RUN_AND_BUILD_TIME"}


def component(kind: str, name: str) -> dict:
    return next(item for item in SPEC[kind] if item["name"] == name)


def spec_env(item: dict, scopes: set[str], bindings: dict[str, str]) -> dict[str, str]:
    """App-level plus component-level variables in ``scopes``, bound.

    A SECRET has no value in the spec; the platform stores it, so does this.
    """
    env = {}
    for variable in [*SPEC.get("envs", []), *item.get("envs", [])]:
        if variable.get("scope", "RUN_AND_BUILD_TIME") not in scopes:
            continue
        if variable.get("type") == "SECRET":
            env[variable["key"]] = bindings["secret:" + variable["key"]]
            continue
        env[variable["key"]] = re.sub(
            r"\$\{([^}]+)\}", lambda m: bindings[m.group(1)], variable["value"]
        )
    return env


def bare_env(extra: dict[str, str]) -> dict[str, str]:
    """Only what a platform container has: no developer or test variables."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}{result.stderr}"
    return result


@dataclass
class Instance:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Rehearsal:
    """What the rehearsed build left: not harness.deployment.Deployment, which
    runs this checkout; these instances run the built copy's own virtualenv
    with the app spec's run command, as the platform would."""

    app_dir: Path
    venv_bin: Path
    build_output: str
    job_output: str
    run_env: dict[str, str]
    instances: list[Instance]


def copy_tracked_files(destination: Path) -> None:
    """The repository as the platform clones it: tracked files only."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def start_instance(deploy_dir: Path, venv_bin: Path, env: dict, port: int, n: int):
    command = component("services", "web")["run_command"].split()
    assert command[:5] == ["daphne", "-b", "0.0.0.0", "-p", "8080"]
    command[4] = str(port)  # two instances cannot both bind 8080 here
    log = deploy_dir.parent / f"web-{n}.log"
    process = subprocess.Popen(
        [str(venv_bin / command[0]), *command[1:]],
        cwd=deploy_dir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return Instance(port=port, process=process, log=log)


def http(url: str, host: str, headers: dict[str, str] | None = None, data=None):
    """(status, headers, body) as the platform's router asks: ``Host`` set,
    redirects not followed."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    response = request(
        f"{parts.scheme}://{parts.netloc}", "POST" if data is not None else "GET",
        path, body=data, headers={"Host": host, **(headers or {})},
    )  # fmt: skip
    return response.status, dict(response.headers.items()), response.body


EDGE = {"X-Forwarded-Proto": "https"}  # what App Platform's edge adds
PROBE_HOST = "10.244.0.7:8080"  # the platform probes by internal address
PASSWORD = "rehearsal-password-1"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Rehearsal]:
    base = tmp_path_factory.mktemp("platform")
    try:
        postgres = PostgresCluster().start()
        tls = make_tls_files(base / "tls")
        redis = RedisServer(password="valkey-pw", tls=tls).start()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    app_dir = base / "workspace"
    copy_tracked_files(app_dir)
    # Build: a fresh virtualenv from requirements.txt, then collectstatic with
    # only the build-time variables (no secret, no database, no Redis).
    run([sys.executable, "-m", "venv", str(base / "venv")], base, bare_env({}))
    venv_bin = base / "venv" / "bin"
    run(
        [str(venv_bin / "pip"), "install", "-q", "-r", "requirements.txt"],
        app_dir, {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    bindings = {
        "db.DATABASE_URL": postgres.create_database("switchboard"),
        "cache.DATABASE_URL": redis.url,
        "cache.CA_CERT": tls.ca_pem,
        # This throwaway PostgreSQL has no TLS: an empty CA leaves
        # verification off, as it is for a database without a CA binding.
        "db.CA_CERT": "",
        "APP_DOMAIN": APP_DOMAIN,
        "APP_URL": f"https://{APP_DOMAIN}",
        "secret:DJANGO_SECRET_KEY": SECRET_KEY,
    }
    web = component("services", "web")
    build_env = bare_env(spec_env(web, BUILD_SCOPES, bindings))
    build = run(
        [str(venv_bin / "python"), "manage.py", "collectstatic", "--noinput"],
        app_dir, build_env,
    )  # fmt: skip
    job = component("jobs", "migrate")
    job_env = bare_env(spec_env(job, RUN_SCOPES, bindings))
    program, *arguments = job["run_command"].split()
    migrate = run([str(venv_bin / program), *arguments], app_dir, job_env)
    run_env = bare_env(spec_env(web, RUN_SCOPES, bindings))
    run(
        [str(venv_bin / "python"), "manage.py", "ensure_room", "lobby"],
        app_dir, run_env,
    )  # fmt: skip
    ports = [8080 if port_is_free(8080) else free_port(), free_port()]
    instances = [
        start_instance(app_dir, venv_bin, run_env, port, n)
        for n, port in enumerate(ports)
    ]
    try:
        for instance in instances:
            wait_until(
                lambda i=instance: http(f"{i.url}/healthz", PROBE_HOST)[0] == 200,
                timeout=30, message=f"instance on {instance.port} healthy",
                ignore=(OSError,),
            )  # fmt: skip
        yield Rehearsal(
            app_dir, venv_bin, build.stdout, migrate.stdout, run_env, instances
        )
    finally:
        for instance in instances:
            instance.process.send_signal(signal.SIGTERM)
        for instance in instances:
            try:
                instance.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                instance.process.kill()
        redis.close()
        postgres.close()


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_build_collects_static_files_without_runtime_variables(deployment):
    manifest = deployment.app_dir / "staticfiles" / "staticfiles.json"
    assert manifest.exists(), deployment.build_output
    assert "core/js/room.js" in json.loads(manifest.read_text())["paths"]


def test_pre_deploy_job_migrates_the_database(deployment):
    assert "Applying core.0001_initial... OK" in deployment.job_output


def test_deploy_checks_pass_with_the_spec_variables(deployment):
    result = subprocess.run(
        [str(deployment.venv_bin / "python"), "manage.py", "check", "--deploy",
         "--fail-level", "WARNING"],
        cwd=deployment.app_dir, env=deployment.run_env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_daphne_logs_what_a_healthy_deploy_shows(deployment):
    for instance in deployment.instances:
        log = instance.log.read_text()
        assert f"Listening on TCP address 0.0.0.0:{instance.port}" in log


def test_health_check_answers_any_host_over_plain_http(deployment):
    for instance in deployment.instances:
        status, _, body = http(f"{instance.url}/healthz", PROBE_HOST)
        assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_other_paths_keep_host_validation_and_the_https_redirect(deployment):
    url = deployment.instances[0].url
    status, headers, _ = http(f"{url}/", APP_DOMAIN)
    assert status == 301
    assert headers["Location"] == f"https://{APP_DOMAIN}/"
    assert http(f"{url}/", "evil.example", EDGE)[0] == 400
    status, headers, _ = http(f"{url}/", APP_DOMAIN, EDGE)
    assert status == 200
    assert "max-age=31536000" in headers["Strict-Transport-Security"]


def test_ready_with_postgres_and_tls_redis(deployment):
    for instance in deployment.instances:
        status, _, body = http(f"{instance.url}/readyz", APP_DOMAIN, EDGE)
        assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_static_files_are_served_by_daphne_with_long_caching(deployment):
    manifest = json.loads(
        (deployment.app_dir / "staticfiles" / "staticfiles.json").read_text()
    )
    hashed = manifest["paths"]["core/css/app.css"]
    status, headers, body = http(
        f"{deployment.instances[1].url}/static/{hashed}", APP_DOMAIN, EDGE
    )
    assert status == 200
    assert body
    assert "max-age=315360000" in headers["Cache-Control"]


def test_a_message_crosses_instances(deployment):
    first, second = deployment.instances
    # As an operator would on the platform's console: the built app's own
    # manage.py, the password in the environment.
    run(
        [str(deployment.venv_bin / "python"), "manage.py", "ensure_user", "rehearsal"],
        deployment.app_dir,
        {**deployment.run_env, ENSURE_USER_PASSWORD: PASSWORD},
    )
    status, _, body = http(
        f"{second.url}/api/auth/token/", APP_DOMAIN,
        {**EDGE, "Content-Type": "application/json"},
        json.dumps({"username": "rehearsal", "password": PASSWORD}).encode(),
    )  # fmt: skip
    assert status == 200, body
    token = json.loads(body)["token"]

    async def exchange() -> dict:
        async with websockets.connect(
            f"ws://127.0.0.1:{first.port}/ws/rooms/lobby/",
            origin=f"https://{APP_DOMAIN}",
            open_timeout=10,
        ) as listener:
            assert json.loads(await listener.recv())["type"] == "welcome"
            async with websockets.connect(
                f"ws://127.0.0.1:{second.port}/ws/rooms/lobby/",
                origin=f"https://{APP_DOMAIN}",
                additional_headers={"Authorization": f"Token {token}"},
            ) as sender:
                await sender.send(
                    json.dumps({"type": "send", "body": "across", "client_id": "r1"})
                )
                async with asyncio.timeout(10):
                    while True:
                        frame = json.loads(await listener.recv())
                        if frame["type"] == "message":
                            return frame

    frame = asyncio.run(exchange())
    assert (frame["author"], frame["body"], frame["client_id"]) == (
        "rehearsal", "across", "r1",
    )  # fmt: skip
