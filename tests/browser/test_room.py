"""The room page with a live server: chat, safety, history, access."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from harness.deployment import Deployment
from tests.browser.browsing import Browsing
from tests.browser.deployment import on_sqlite

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__pwned=1">'


def test_two_users_chat_live_and_each_sees_the_others_message(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Alice and Bob, each in a browser, see each other's messages at once."""
    deployment.create_room(slug)
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    bob = browsing.open_room(deployment.url(1), slug, user="bob")
    alice.wait_open()
    bob.wait_open()
    expect(alice.presence).to_contain_text("bob")
    expect(bob.presence).to_contain_text("alice")

    alice.send("Hi Bob, are you there?")
    bob.expect_bodies(["Hi Bob, are you there?"])

    bob.body_field.press_sequentially("Yes")
    expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
    bob.body_field.press("Shift+Enter")
    bob.body_field.press_sequentially("two lines")
    bob.body_field.press("Enter")

    expected = ["Hi Bob, are you there?", "Yes\ntwo lines"]
    alice.expect_bodies(expected)
    bob.expect_bodies(expected)
    expect(alice.page.locator("#typing")).to_have_text("")
    assert alice.seqs() == bob.seqs() == [1, 2]


def test_hostile_message_is_shown_as_text_and_runs_nothing(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Markup in a body, live or embedded in the page, is text, never HTML."""
    deployment.create_room(slug)
    embedded = f"</script><script>window.__pwned=2</script>{HOSTILE.replace('1', '3')}"
    deployment.post(slug, embedded, user="bob")
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    bob = browsing.open_room(deployment.url(1), slug, user="bob")
    alice.wait_open()
    bob.wait_open()

    alice.send(HOSTILE)

    for page in (alice, bob):
        page.expect_bodies([embedded, HOSTILE])
        assert page.page.evaluate("window.__pwned") is None
        expect(page.page.locator("#messages img")).to_have_count(0)
        expect(page.page.locator("#messages script")).to_have_count(0)


def test_gap_is_filled_from_history(
    pair: Deployment, browsing: Browsing, slug: str
) -> None:
    """A seq missed live (posted on another instance) is fetched within ~2 s."""
    pair.create_room(slug)
    alice = browsing.open_room(pair.url(0), slug, user="alice")
    alice.wait_open()

    pair.post(slug, "posted elsewhere", user="bob", instance=1)  # seq 1: not live
    pair.post(slug, "posted here", user="bob", instance=0)  # seq 2: live

    alice.expect_bodies(["posted elsewhere", "posted here"], timeout=10_000)
    assert alice.seqs() == [1, 2]


def test_guest_reads_live_but_gets_a_login_link_instead_of_a_composer(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Anonymous visitors see a public room read-only."""
    deployment.create_room(slug)
    guest = browsing.open_room(deployment.url(0), slug)
    guest.wait_open()
    expect(guest.page.locator("#composer")).to_have_count(0)
    login = guest.page.get_by_role("link", name="Log in").last
    expect(login).to_have_attribute("href", f"/accounts/login/?next=/rooms/{slug}/")

    deployment.post(slug, "hello, readers", user="carol")

    guest.expect_bodies(["hello, readers"])


def test_load_earlier_pages_back_through_history(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """The page shows the latest 50; "Load earlier" brings the rest, in order."""
    deployment.create_room(slug)
    bodies = [f"message {n}" for n in range(1, 61)]
    for body in bodies:
        deployment.post(slug, body, user="bob")
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    alice.wait_open()
    expect(alice.items).to_have_count(50)
    assert alice.seqs()[0] == 11

    alice.page.get_by_role("button", name="Load earlier messages").click()

    alice.expect_bodies(bodies)
    expect(alice.page.locator("#load-earlier")).to_be_hidden()
    expect(alice.page.locator("#history-start")).to_be_visible()


def test_removed_member_is_told_and_the_page_stops(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Close code 4403: access is gone; no reconnecting, composer disabled."""
    deployment.create_room(slug, private=True)
    deployment.api(
        "POST", f"/api/rooms/{slug}/members/", {"username": "bob"}, user="alice"
    )
    bob = browsing.open_room(deployment.url(1), slug, user="bob")
    bob.wait_open()

    deployment.api(
        "DELETE", f"/api/rooms/{slug}/members/bob/", user="alice", expect=(204,)
    )

    bob.wait_state("closed", timeout=5_000)
    expect(bob.banner).to_contain_text("no longer have access")
    expect(bob.body_field).to_be_disabled()


@pytest.fixture
def strict_limits(tmp_path: Path, sqlite_template: Path) -> Iterator[Deployment]:
    """One instance with a small send limit (burst 3, 10 per second).

    Request it before ``browsing``: fixtures stop in reverse order, so the
    pages close before the server does and log no refused reconnects.
    """
    limits = {"SWITCHBOARD_SEND_BURST": "3", "SWITCHBOARD_SEND_RATE_PER_SECOND": "10"}
    app = on_sqlite(tmp_path, sqlite_template, name="limited", env=limits)
    try:
        yield app.start()
    finally:
        app.close()


def test_a_burst_past_the_rate_limit_is_delivered_in_order(
    strict_limits: Deployment, browsing: Browsing, slug: str
) -> None:
    """rate_limited holds the outbox politely; every message arrives, in order."""
    strict_limits.create_room(slug)
    alice = browsing.open_room(strict_limits.url(0), slug, user="alice")
    alice.wait_open()
    bodies = [f"quick {n}" for n in range(10)]

    alice.page.evaluate(
        """(bodies) => {
          const form = document.getElementById("composer");
          for (const body of bodies) {
            form.elements.body.value = body;
            form.requestSubmit();
          }
        }""",
        bodies,
    )

    expect(alice.page.locator("#notice")).to_contain_text("sending messages quickly")
    alice.expect_bodies(bodies)
    assert [m["body"] for m in strict_limits.messages(slug)] == bodies
