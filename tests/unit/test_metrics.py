"""/metrics: off without a token, refused without it, and counters that move
with the traffic that should move them (and only those)."""

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from core import limits
from tests.factories import private_room
from tests.unit.conftest import connected, receive_until, refused, send_json, token_for

TOKEN = "metrics-token-" + "x" * 32
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    limits.reset_for_tests()


async def scrape(async_client) -> Samples:
    response = await async_client.get(
        "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("instance"), sample  # every sample names its instance
            samples[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples) -> dict[str, float]:
    """Every switchboard_ sample that changed, as "name{labels}": delta."""
    changed = {}
    for key in before.keys() | after.keys():
        name, labels = key
        if not name.startswith("switchboard_"):
            continue
        delta = after.get(key, 0.0) - before.get(key, 0.0)
        if delta:
            changed[name + "".join(f"{{{k}={v}}}" for k, v in labels)] = delta
    return changed


# --- access ----------------------------------------------------------------------


async def test_without_a_token_setting_the_endpoint_is_off(async_client, settings):
    settings.METRICS_TOKEN = ""
    response = await async_client.get(
        "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Token {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer"],
)
async def test_anything_but_the_bearer_token_gets_401(async_client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await async_client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"switchboard_" not in response.content


# --- what moves --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_session_moves_the_counters_it_should(async_client, lobby, alice, bob):
    secret = await database_sync_to_async(private_room)(bob, slug="vault")
    before = await scrape(async_client)

    async with connected("lobby", token=await token_for(alice)) as ws:
        during = await scrape(async_client)
        await send_json(ws, {"type": "send", "body": "hello", "client_id": "c1"})
        await receive_until(ws, lambda f: f["type"] == "ack")
        await ws.send_to(text_data="{not json")
        await receive_until(ws, lambda f: f["type"] == "error")
        await send_json(ws, {"type": "history", "limit": 5})
        await receive_until(ws, lambda f: f["type"] == "history")
        await send_json(ws, {"type": "ping"})
        await receive_until(ws, lambda f: f["type"] == "pong")
    await refused(secret.slug, token=await token_for(alice))  # HTTP 403
    after = await scrape(async_client)

    for gauge in ("event_loop_lag_seconds", "unsent_output_bytes", "hub_groups",
                  "database_threads_busy"):  # fmt: skip
        assert (f"switchboard_{gauge}", ()) in after, gauge
    assert value(during, "switchboard_connections_open", room_kind="public") == 1
    assert value(after, "switchboard_connections_open", room_kind="public") == 0
    changes = moved(before, after)
    expected = {
        "switchboard_handshakes_total{outcome=accepted}": 1,
        "switchboard_handshakes_total{outcome=refused}": 1,
        "switchboard_frames_received_total{type=send}": 1,
        "switchboard_frames_received_total{type=invalid}": 1,
        "switchboard_frames_received_total{type=history}": 1,
        "switchboard_frames_received_total{type=ping}": 1,
        "switchboard_frames_sent_total{type=welcome}": 1,
        "switchboard_frames_sent_total{type=ack}": 1,
        "switchboard_frames_sent_total{type=error}": 1,
        "switchboard_frames_sent_total{type=history}": 1,
        "switchboard_frames_sent_total{type=pong}": 1,
        "switchboard_frames_sent_total{type=message}": 1,
        "switchboard_error_frames_total{code=bad_json}": 1,
        "switchboard_messages_stored_total": 1,
        "switchboard_publishes_total{outcome=ok}": 1,
        "switchboard_publish_seconds_count": 1,
        "switchboard_delivery_lag_seconds_count": 1,
    }
    assert {k: changes.get(k) for k in expected} == expected
    # Presence frames and database calls moved too; nothing was limited,
    # dropped, lost or failed.
    assert changes["switchboard_frames_sent_total{type=presence}"] >= 1
    assert changes["switchboard_database_call_seconds_count{executor=db}"] >= 1
    assert changes["switchboard_database_call_seconds_count{executor=handshake}"] >= 1
    assert not [k for k in changes if k.startswith((
        "switchboard_rate_limited", "switchboard_slow_client",
        "switchboard_hub_gaps", "switchboard_presence_errors",
        "switchboard_publishes_total{outcome=failed}",
    ))]  # fmt: skip


@pytest.mark.django_db(transaction=True)
@override_settings(SEND_BURST=1, SEND_RATE_PER_SECOND=0.1)
async def test_a_refused_send_counts_under_its_limit(async_client, lobby, alice):
    before = await scrape(async_client)
    async with connected("lobby", token=await token_for(alice)) as ws:
        for n in range(2):
            await send_json(ws, {"type": "send", "body": f"#{n}", "client_id": f"r{n}"})
        frame, _ = await receive_until(ws, lambda f: f["type"] == "error")
    assert frame["code"] == "rate_limited"
    changes = moved(before, await scrape(async_client))
    assert changes["switchboard_rate_limited_total{limit=send}"] == 1
    assert changes["switchboard_error_frames_total{code=rate_limited}"] == 1
    assert changes["switchboard_messages_stored_total"] == 1
