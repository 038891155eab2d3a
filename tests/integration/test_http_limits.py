"""HTTP limits are shared by every instance, through Redis; and Django
verifies PostgreSQL's certificate when DATABASE_CA_CERT is given.

Two Daphne instances on one Redis, as App Platform runs them: sign-in
attempts and room creations counted on one instance count on the other, so
a client gains nothing by spreading its requests over instances (the load
balancer does that for it anyway). Each test gives its instances a key
prefix of their own, so tests do not share buckets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.app import AppProcess, manage
from harness.deployment import Deployment, Launcher
from harness.http import HTTP_TIMEOUT_SECONDS, JSON, http_json, request
from harness.postgres import PostgresCluster, give_to
from harness.process import LOOPBACK, ServiceFailed, ServiceUnavailable
from harness.tls import make_tls_files
from harness.waiting import wait_until
from tests.integration.common import PASSWORD

pytestmark = pytest.mark.integration

USERS = 2
# No token comes back during a test.
NO_REFILL = "0.001"


def limited(deployment: Deployment, test: str, **limits: str) -> dict[str, str]:
    """Instance variables: this test's key prefix and ``limits``."""
    prefix = f"{deployment.env['SWITCHBOARD_CHANNEL_PREFIX']}-{test}"
    return {"SWITCHBOARD_CHANNEL_PREFIX": prefix} | {
        f"SWITCHBOARD_{name}": value for name, value in limits.items()
    }


def post(
    app: AppProcess, path: str, body: object, token: str | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST JSON to ``app``; return (status, headers, decoded body)."""
    response = request(
        app, "POST", path, json_body=body, token=token, headers=JSON,
        timeout=HTTP_TIMEOUT_SECONDS,
    )  # fmt: skip
    return response.status, dict(response.headers.items()), response.json()


def sign_in(app: AppProcess, username: str, password: str) -> tuple[int, dict, Any]:
    return post(app, "/api/auth/token/", {"username": username, "password": password})


def test_sign_in_attempts_on_one_instance_count_on_the_other(
    deployment: Deployment, launcher: Launcher
) -> None:
    """Four attempts from one address, alternating instances, use up a burst
    of 4: the fifth is refused on either instance, right password or not."""
    env = limited(
        deployment,
        "address",
        CREDENTIAL_ADDRESS_BURST="4",
        CREDENTIAL_ADDRESS_RATE_PER_SECOND=NO_REFILL,
    )
    a, b = launcher.launch("a", "b", env=env)
    user = deployment.usernames[0]

    statuses = [sign_in(app, user, "wrong")[0] for app in (a, b, a, b)]
    refused = [sign_in(app, user, PASSWORD) for app in (a, b)]

    assert statuses == [400, 400, 400, 400]
    for status, headers, body in refused:
        assert status == 429, body
        assert int(headers["Retry-After"]) > 900
        assert body["retry_after_ms"] > 900_000
        assert "Too many sign-in attempts" in body["detail"]


def test_guesses_at_a_username_on_one_instance_count_on_the_other(
    deployment: Deployment, launcher: Launcher
) -> None:
    """Two wrong passwords for one user on A: B refuses the third guess
    before checking it, and still serves another user."""
    env = limited(
        deployment,
        "username",
        CREDENTIAL_USER_ADDRESS_BURST="2",
        CREDENTIAL_USER_ADDRESS_RATE_PER_SECOND=NO_REFILL,
    )
    a, b = launcher.launch("a", "b", env=env)
    target, other = deployment.usernames[:2]

    guesses = [sign_in(a, target, f"guess-{n}")[0] for n in range(2)]
    status, _, body = sign_in(b, target, PASSWORD)

    assert guesses == [400, 400]
    assert status == 429, body
    assert sign_in(b, other, PASSWORD)[0] == 200


def test_room_creations_on_one_instance_count_on_the_other(
    deployment: Deployment, launcher: Launcher
) -> None:
    env = limited(
        deployment,
        "rooms",
        ROOM_CREATE_BURST="2",
        ROOM_CREATE_RATE_PER_SECOND=NO_REFILL,
    )
    a, b = launcher.launch("a", "b", env=env)
    status, body = http_json(
        a,
        "POST",
        "/api/auth/token/",
        body={"username": deployment.usernames[0], "password": PASSWORD},
    )
    assert status == 200, body
    token = body["token"]
    tag = deployment.name[:20]

    made = [
        post(app, "/api/rooms/", {"name": f"{tag}-{n}"}, token)[0]
        for n, app in enumerate((a, b))
    ]
    status, headers, body = post(a, "/api/rooms/", {"name": f"{tag}-2"}, token)

    assert made == [201, 201]
    assert status == 429, body
    assert "Retry-After" in headers
    assert "Too many new rooms" in body["detail"]


# --- PostgreSQL over verified TLS (DATABASE_CA_CERT) ------------------------------
# Not an HTTP limit, but the same deploy-hardening item of the issue; it uses
# a cluster of its own so the session's shared one keeps serving plain TCP.

# Django connects through the settings' OPTIONS; the server says whether
# TLS carries that connection.
CONNECT = (
    "from django.db import connection\n"
    "with connection.cursor() as cursor:\n"
    "    cursor.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')\n"
    "    print(cursor.fetchone()[0])\n"
)


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    """A PostgreSQL cluster whose certificate names ``localhost`` only."""
    try:
        cluster = PostgresCluster()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    with cluster:
        tls = make_tls_files(cluster.directory / "tls", names=("localhost",))
        wrong = make_tls_files(tmp_path_factory.mktemp("other-ca"))
        if cluster.os_user:
            for path in (tls.server_cert, tls.server_key, tls.server_key.parent):
                give_to(path, cluster.os_user)
        with cluster.connect() as conn:
            conn.execute(f"ALTER SYSTEM SET ssl_cert_file = '{tls.server_cert}'")
            conn.execute(f"ALTER SYSTEM SET ssl_key_file = '{tls.server_key}'")
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("SELECT pg_reload_conf()")
        url = cluster.create_database("tls_check").replace(LOOPBACK, "localhost")
        wait_until(
            lambda: django_connects(url + "?sslmode=require") == "True",
            timeout=15,
            message="PostgreSQL serving TLS",
            ignore=(ServiceFailed,),
        )
        yield TlsPostgres(url=url, ca_pem=tls.ca_pem, other_ca_pem=wrong.ca_pem)


@dataclass(frozen=True)
class TlsPostgres:
    url: str  # postgres://…@localhost:port/tls_check, no sslmode
    ca_pem: str
    other_ca_pem: str


def django_connects(url: str, ca: str | None = None) -> str:
    """What Django's connection says under DATABASE_URL=url (and the CA):
    "True" for a TLS connection; raises ServiceFailed if it cannot connect."""
    env = {"DJANGO_SECRET_KEY": "tls-check", "DATABASE_URL": url}
    if ca is not None:
        env["DATABASE_CA_CERT"] = ca
    # -v 0: no "objects imported automatically" line before the answer.
    return manage("shell", "-v", "0", "-c", CONNECT, env=env).stdout.strip()


def test_database_ca_lets_django_connect_to_the_server_it_signed(
    tls_postgres: TlsPostgres,
) -> None:
    url = tls_postgres.url + "?sslmode=require"
    assert django_connects(url, tls_postgres.ca_pem) == "True"


def test_database_ca_refuses_a_server_it_did_not_sign(
    tls_postgres: TlsPostgres,
) -> None:
    """sslmode=require alone connects to anyone; with the CA, an impostor
    (a certificate from another CA) is refused."""
    url = tls_postgres.url + "?sslmode=require"
    assert django_connects(url) == "True"
    with pytest.raises(ServiceFailed, match="certificate verify failed"):
        django_connects(url, tls_postgres.other_ca_pem)


def test_database_ca_refuses_a_certificate_for_another_host(
    tls_postgres: TlsPostgres,
) -> None:
    """verify-full checks the name: the certificate names localhost, not
    127.0.0.1. An explicit verify-ca in the URL checks the chain only."""
    by_address = tls_postgres.url.replace("localhost", LOOPBACK)
    with pytest.raises(ServiceFailed, match="does not match host name"):
        django_connects(by_address + "?sslmode=require", tls_postgres.ca_pem)
    chain_only = by_address + "?sslmode=verify-ca"
    assert django_connects(chain_only, tls_postgres.ca_pem) == "True"
