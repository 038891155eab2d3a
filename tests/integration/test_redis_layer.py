"""The Redis channel layer as deployed: idle connections and TLS.

DigitalOcean's managed Redis speaks TLS only (``rediss://`` with a password)
and App Platform hands the app its CA as PEM text (``REDIS_CA_CERT``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from core import limits, presence
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room
from harness.process import ServiceUnavailable
from harness.redis_server import RedisServer
from harness.tls import TlsFiles, make_tls_files
from harness.ws import Clients, first_to_close, wait_for_readyz
from tests.integration.common import report, unique_slug

pytestmark = pytest.mark.integration

USERS = 5

IDLE_CONNECTIONS = 20
IDLE_SECONDS = 61


@pytest.mark.timeout(180)
async def test_idle_connections_stay_open_and_keep_receiving(
    launcher: Launcher, deployment: Deployment, clients: Clients
) -> None:
    """channels_redis issue 422: redis-py 8 defaults ``socket_timeout`` to
    5 s, which breaks the layer's blocking receive (BZPOPMIN, 5 s) on a quiet
    process; the settings turn it off for the layer.

    Twenty connections send nothing for 61 s (the client sends no pings
    either; only Daphne's protocol-level pings flow), then each must still
    be open and receive a new message within a second. The process must log
    no warning meanwhile: with the 5 s timeout, core.fanout's hub keeps the
    sockets open by retrying, but its receive fails every few seconds, and
    a message that arrives during its back-off waits up to 5 s.
    """
    (app,) = launcher.launch("idle")
    tokens = deployment.fetch_tokens(app)
    names = deployment.usernames
    slug = unique_slug("idle")
    create_room(app, tokens[names[0]], slug)
    idle = [
        await clients.open(app, slug, token=tokens[names[n % 4]], name=f"user{n}")
        if n % 2
        else await clients.open(app, slug, name=f"anonymous{n}")
        for n in range(IDLE_CONNECTIONS)
    ]

    started = time.monotonic()
    quiet_from = len(app.log_text())
    dropped = await first_to_close(idle, timeout=IDLE_SECONDS)
    assert dropped is None, (
        f"{dropped.name} closed with {dropped.close_code} after "
        f"{dropped.closed_at - started:.1f} s idle"
    )

    status, posted = await ahttp_json(
        app,
        "POST",
        f"/api/rooms/{slug}/messages/",
        token=tokens[names[4]],
        body={"body": "after a quiet minute"},
    )
    assert status == 201, posted
    for client in idle:
        await client.wait_for_seqs({posted["seq"]}, timeout=1)
        assert client.messages[-1] == posted
    assert not [client.name for client in idle if client.closed]
    complaints = [
        line
        for line in app.log_text()[quiet_from:].splitlines()
        if " WARNING " in line or " ERROR " in line
    ]
    assert not complaints, complaints[:5]


async def test_a_burst_of_handshakes_shares_a_few_presence_connections(
    launcher: Launcher,
    deployment: Deployment,
    redis_server: RedisServer,
    clients: Clients,
) -> None:
    """Every handshake writes and reads presence at once; the connections
    for it are capped per process, and every connection says whose it is."""
    (app,) = launcher.launch("burst")
    tokens = deployment.fetch_tokens(app)
    slug = unique_slug("burst")
    create_room(app, tokens[deployment.usernames[0]], slug)
    await asyncio.gather(
        *(clients.open(app, slug, name=f"anonymous{n}") for n in range(60))
    )

    prefix = deployment.env["SWITCHBOARD_CHANNEL_PREFIX"]
    names = Counter(
        entry["name"]
        for entry in redis_server.client().client_list()
        if entry["name"].startswith(prefix)
    )
    # Unbounded, redis-py opened one connection per concurrent handshake.
    assert 1 <= names[f"{prefix}-presence"] <= presence.REDIS_CONNECTIONS < 60, names
    assert names[f"{prefix}-layer"] >= 1, names
    # Limits: one pool for the event loop, one for request threads.
    assert names[f"{prefix}-limits"] <= limits.REDIS_CONNECTIONS, names
    assert names[f"{prefix}-limits-http"] <= limits.REDIS_CONNECTIONS, names
    uses = ("presence", "layer", "cache", "limits", "limits-http")
    assert set(names) <= {f"{prefix}-{use}" for use in uses}


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def tls_redis(tls_files: TlsFiles) -> Iterator[RedisServer]:
    """A TLS-only redis-server with a password, like DigitalOcean's."""
    try:
        server = RedisServer(password=secrets.token_hex(12), tls=tls_files)
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


async def test_instances_on_tls_redis_talk_and_a_wrong_ca_is_not_ready(
    launcher: Launcher,
    deployment: Deployment,
    clients: Clients,
    tls_redis: RedisServer,
    tls_files: TlsFiles,
) -> None:
    """Trust comes only from REDIS_CA_CERT (PEM text). An instance given
    another CA cannot reach Redis: /readyz says so, /healthz still answers.
    """
    assert tls_redis.url.startswith("rediss://:")
    other_ca = trustme.CA(organization_name="Someone else's CA")
    right = {"REDIS_URL": tls_redis.url, "REDIS_CA_CERT": tls_files.ca_pem}
    wrong = {**right, "REDIS_CA_CERT": other_ca.cert_pem.bytes().decode("ascii")}
    a, b, untrusting = launcher.launch_each({"a": right, "b": right, "wrong-ca": wrong})
    tokens = deployment.fetch_tokens(a, b)

    for app in (a, b):
        assert await wait_for_readyz(app, 200, timeout=10) == {"status": "ok"}
    slug = unique_slug("tls")
    create_room(a, tokens[deployment.usernames[0]], slug)
    listener = await clients.open(b, slug, name="anonymous@B")
    sender = await clients.open(a, slug, token=tokens[deployment.usernames[1]])
    seq = await sender.send_message("over TLS")
    await listener.wait_for_seqs({seq})
    assert listener.messages[-1]["body"] == "over TLS"

    started = time.monotonic()
    body = await wait_for_readyz(untrusting, 503, timeout=10)
    report(
        "wrong CA",
        {"readyz": body, "answered_after_s": f"{time.monotonic() - started:.2f}"},
    )
    assert "channel_layer" in body["failing"]
    assert "database" not in body["failing"]
    status, health = await ahttp_json(untrusting, "GET", "/healthz")
    assert (status, health) == (200, {"status": "ok"})
    untrusting.check_alive()
