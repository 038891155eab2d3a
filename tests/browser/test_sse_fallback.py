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


# A proxy that breaks the upgrade: every handshake fails without opening
# (1006) while ``window.socketsBroken`` is true; once a test clears it,
# sockets are the real thing again (a network where WebSockets come back).
FAILING_SOCKETS = """
const RealWebSocket = window.WebSocket;
window.socketsBroken = true;
window.WebSocket = class extends EventTarget {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    if (!window.socketsBroken) return new RealWebSocket(url);
    super();
    this.url = url;
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      const event = new Event("close");
      Object.assign(event, { code: 1006, reason: "" });
      this.dispatchEvent(event);
    }, 50);
  }
  send() { throw new Error("not open"); }
  close() {}
};
"""


def test_when_handshakes_keep_failing_the_page_falls_back_and_chats(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    deployment.create_room(slug)
    deployment_posts_before = "posted before the page"
    deployment.post(slug, deployment_posts_before, user="bob")
    alice = browsing.open_room(
        deployment.url(0),
        slug,
        user="alice",
        prepare=lambda page: page.add_init_script(FAILING_SOCKETS),
    )
    alice.wait_open()
    expect(alice.root).to_have_attribute("data-transport", "sse")
    alice.send("after the fallback")
    # Stored before bob posts, so the order below is the order of the sends.
    alice.expect_bodies([deployment_posts_before, "after the fallback"])
    last = len(deployment.instances) - 1  # another instance where there are two
    deployment.post(slug, "from bob, live", user="bob", instance=last)
    alice.expect_bodies(
        [deployment_posts_before, "after the fallback", "from bob, live"]
    )
    assert alice.seqs() == [1, 2, 3]


def test_once_sockets_work_again_the_page_moves_back_to_a_websocket(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    deployment.create_room(slug)

    def sockets_that_come_back(page: Page) -> None:
        # Fake timers that still run in real time: the 30 s wait before the
        # first upgrade attempt is skipped with fast_forward, not slept.
        page.clock.install()
        page.add_init_script(FAILING_SOCKETS)

    alice = browsing.open_room(
        deployment.url(0), slug, user="alice", prepare=sockets_that_come_back
    )
    alice.wait_open()
    expect(alice.root).to_have_attribute("data-transport", "sse")
    last = len(deployment.instances) - 1
    deployment.post(slug, "while on the stream", user="bob", instance=last)
    alice.expect_bodies(["while on the stream"])

    # Still broken at the first attempt: the page stays on the stream.
    alice.page.clock.fast_forward(31_000)
    alice.send("still over HTTP")
    alice.expect_bodies(["while on the stream", "still over HTTP"])
    expect(alice.root).to_have_attribute("data-transport", "sse")

    alice.page.evaluate("window.socketsBroken = false")
    # The next attempt comes after twice the delay (60 s), and opens.
    alice.page.clock.fast_forward(61_000)
    expect(alice.root).to_have_attribute("data-transport", "websocket")
    alice.wait_open()
    expect(alice.page.locator("#connection")).not_to_contain_text("over HTTP")

    deployment.post(slug, "after the upgrade", user="bob", instance=last)
    alice.send("over the socket")
    expected = ["while on the stream", "still over HTTP", "after the upgrade",
                "over the socket"]  # fmt: skip
    alice.expect_bodies(expected)
    assert alice.seqs() == [1, 2, 3, 4]
