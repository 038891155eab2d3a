"""Where WebSockets are blocked, the room page falls back to Server-Sent
Events and the HTTP API by itself, says so, and still chats live."""

import pytest
from playwright.sync_api import Page, expect

from tests.browser.browsing import Browsing
from tests.browser.deployment import Deployment

pytestmark = pytest.mark.browser


def no_websockets(page: Page) -> None:
    page.add_init_script("window.WebSocket = undefined")


def test_without_websockets_the_page_chats_live_over_sse(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    deployment.create_room(slug)
    alice = browsing.open_room(
        deployment.url(0), slug, user="alice", prepare=no_websockets
    )
    bob = browsing.open_room(deployment.url(1), slug, user="bob")
    alice.wait_open()
    bob.wait_open()
    expect(alice.root).to_have_attribute("data-transport", "sse")
    expect(alice.page.locator("#connection")).to_contain_text("over HTTP")
    expect(bob.root).not_to_have_attribute("data-transport", "sse")
    expect(alice.presence).to_contain_text("bob")
    expect(bob.presence).to_contain_text("alice")

    alice.send("sent over HTTP <b>not bold</b>")
    bob.expect_bodies(["sent over HTTP <b>not bold</b>"])

    bob.body_field.press_sequentially("Yes")
    expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
    bob.body_field.press("Enter")
    # Typing notices go at most once per interval (3 s), and alice's first
    # went with her message.
    alice.page.wait_for_timeout(3_200)
    alice.body_field.press_sequentially("typing over HTTP")
    expect(bob.page.locator("#typing")).to_have_text("alice is typing…")
    alice.body_field.press("Enter")

    expected = ["sent over HTTP <b>not bold</b>", "Yes", "typing over HTTP"]
    alice.expect_bodies(expected)
    bob.expect_bodies(expected)
    assert alice.seqs() == bob.seqs() == [1, 2, 3]
    assert alice.page.locator("#messages b").count() == 0
