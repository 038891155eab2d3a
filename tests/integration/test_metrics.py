"""/metrics on two real Daphne instances sharing Redis: a scrape of either
answers for both, each sample labelled with its instance, and the counters
moved by traffic on the other instance show up there."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import create_room, request
from harness.waiting import async_wait_until
from harness.ws import Clients
from tests.integration.common import unique_slug

pytestmark = pytest.mark.integration

TOKEN = "integration-metrics-token-" + "k" * 32
ENV = {"SWITCHBOARD_METRICS_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def pair(module_launcher: Launcher, deployment: Deployment) -> tuple[AppProcess, ...]:
    a, b = module_launcher.launch("metrics-a", "metrics-b", env=ENV)
    deployment.fetch_tokens(a, b)
    return a, b


def scrape(app: AppProcess, token: str = TOKEN) -> tuple[int, dict]:
    """(status, {(name, instance, labels): value})."""
    response = request(
        app, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    text = response.text
    if response.status != 200:
        return response.status, {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            instance = labels.pop("instance")
            samples[(sample.name, instance, tuple(sorted(labels.items())))] = (
                sample.value
            )
    return response.status, samples


def per_instance(samples: dict, name: str, **labels: str) -> dict[str, float]:
    wanted = tuple(sorted(labels.items()))
    return {
        instance: value
        for (sample, instance, got), value in samples.items()
        if sample == name and got == wanted
    }


async def test_either_instance_answers_for_the_fleet(
    pair: tuple[AppProcess, AppProcess], deployment: Deployment, clients: Clients
) -> None:
    a, b = pair
    assert (await asyncio.to_thread(scrape, a, "wrong" * 8))[0] == 401
    name = deployment.usernames[0]
    slug = unique_slug("metrics")
    create_room(a, deployment.tokens[name], slug)
    on_b = await clients.open(b, slug, token=deployment.tokens[name], name="on-b")
    await on_b.send_message("counted on b")
    _, before_a = await asyncio.to_thread(scrape, a)
    b_itself = per_instance(
        (await asyncio.to_thread(scrape, b))[1], "switchboard_messages_stored_total"
    )

    async def a_sees_b() -> dict | None:
        _, samples = await asyncio.to_thread(scrape, a)
        stored = per_instance(samples, "switchboard_messages_stored_total")
        # b's snapshot, written after its message was stored.
        return samples if len(stored) == 2 and max(stored.values()) >= 1 else None

    samples = await async_wait_until(
        a_sees_b, timeout=25, interval=0.5, message="a's /metrics with b's snapshot"
    )
    stored = per_instance(samples, "switchboard_messages_stored_total")
    accepted = per_instance(samples, "switchboard_handshakes_total", outcome="accepted")
    assert len(stored) == 2, stored
    # The message was stored on b alone; b's series says so on a's answer.
    [(b_instance, b_value)] = [(i, v) for i, v in stored.items() if v >= 1]
    assert b_instance in b_itself
    assert b_value == b_itself[b_instance]
    assert accepted[b_instance] >= 1
    a_instance = next(i for i in stored if i != b_instance)
    assert stored[a_instance] == 0
    complete = per_instance(samples, "switchboard_metrics_fleet_complete")
    assert complete == {a_instance: 1.0}
    assert before_a  # a answered at once, before b's snapshot was there
