"""The rooms sidebar: live unread and mention counts that clear across tabs,
switching rooms without a page load (Back included), and the members panel
whose changes reach the other person's page; two people on two instances
over Redis and PostgreSQL."""

import re

import pytest
from playwright.sync_api import Dialog, Locator, Page, expect

from harness.deployment import Deployment
from tests.browser.browsing import Browsing
from tests.browser.room_page import RoomPage

pytestmark = [
    pytest.mark.browser,
    # Live across instances needs the shared channel layer.
    pytest.mark.parametrize("deployment", ["redis-postgres-2"], indirect=True),
]

LIVE_MS = 10_000


def entry(page: Page, slug: str) -> Locator:
    """The sidebar's item for ``slug``."""
    return page.locator(f"#rooms-list > li[data-slug='{slug}']")


def expect_counts(page: Page, slug: str, unread: int, mentions: int) -> None:
    item = entry(page, slug)
    expect(item).to_have_attribute("data-unread", str(unread), timeout=LIVE_MS)
    expect(item).to_have_attribute("data-mentions", str(mentions), timeout=LIVE_MS)


def switch(room: RoomPage, name: str, slug: str) -> None:
    """Pick a room in the sidebar; the page must not load again."""
    room.page.evaluate("window.__samePage = true")
    room.page.get_by_role("navigation", name="Rooms").get_by_role(
        "link", name=re.compile(f"^#? ?{re.escape(name)}")
    ).click()
    expect(room.root).to_have_attribute("data-room", slug)
    room.wait_open()
    assert room.page.evaluate("window.__samePage") is True, "the page loaded again"


def test_unread_and_mentions_move_live_and_clear_across_tabs(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Bob posts in a room Alice is not looking at: both of her tabs count
    it live, the mention apart; reading it in one tab clears the other;
    switching is in place and Back returns to the first room."""
    other = f"{slug}-b"
    deployment.create_room(slug, name="Alpha")
    deployment.create_room(other, name="Bravo")
    first = browsing.open_room(deployment.url(0), slug, user="alice")
    second = browsing.open_room(deployment.url(1), slug, user="alice")
    bob = browsing.open_room(deployment.url(1), other, user="bob")
    for room in (first, second, bob):
        room.wait_open()
    expect(entry(first.page, slug).get_by_role("link")).to_have_attribute(
        "aria-current", "page"
    )

    bob.send("anyone around?")
    bob.send("@alice can you look at the deploy?")
    for tab in (first, second):
        expect_counts(tab.page, other, 2, 1)
    expect(bob.page.locator("#messages mark.mention")).to_have_text("@alice")
    expect(bob.page.locator("#messages mark.mention-me")).to_have_count(0)
    link = entry(first.page, other).get_by_role("link")
    expect(link).to_have_accessible_name(re.compile(r"Bravo.*2 unread, 1 mention"))
    expect(first.page.locator("#rooms-announcer")).to_contain_text("Bravo: ")
    # Arrow keys move between the rooms of the list.
    entry(first.page, slug).get_by_role("link").focus()
    first.page.keyboard.press("ArrowDown")
    expect(link).to_be_focused()

    switch(second, "Bravo", other)
    second.expect_bodies(["anyone around?", "@alice can you look at the deploy?"])
    expect(second.page.locator("#messages mark.mention-me")).to_have_text("@alice")
    # Seen in the second tab: read there, cleared in the first as well.
    expect_counts(first.page, other, 0, 0)
    expect_counts(second.page, other, 0, 0)
    expect(second.page.locator(".room-title h1")).to_be_focused()
    assert second.page.url.endswith(f"/rooms/{other}/")

    second.page.go_back()
    expect(second.root).to_have_attribute("data-room", slug)
    second.wait_open()
    assert second.page.evaluate("window.__samePage") is True
    second.send("back in Alpha")
    first.expect_bodies(["back in Alpha"])


def test_members_added_and_removed_in_the_ui_reach_the_other_page(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """The owner adds Bob by name (checked as typed): the room appears in
    his sidebar live; a rename reaches him; removed, his page says so."""
    lounge = f"{slug}-l"
    deployment.create_room(slug, name="Plans", private=True)
    deployment.create_room(lounge, name="Lounge")
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    bob = browsing.open_room(deployment.url(1), lounge, user="bob")
    alice.wait_open()
    bob.wait_open()
    expect(entry(bob.page, slug)).to_have_count(0)

    members = alice.page.locator("#members-list")
    owner = members.locator("li[data-owner]")
    expect(owner).to_have_attribute("data-username", "alice")
    expect(owner).to_contain_text("owner")
    field = alice.page.get_by_label("Add member")
    status = alice.page.locator("#member-add-status")
    field.fill("bobx")
    expect(status).to_have_text("No such user.")
    field.fill("bob")
    expect(status).to_have_text("bob can be added.")
    field.press("Enter")
    expect(members.locator("li[data-username='bob']")).to_be_visible()

    # Bob's page learns of the room live, and opens it in place.
    expect(entry(bob.page, slug)).to_be_visible(timeout=LIVE_MS)
    switch(bob, "Plans", slug)
    expect(bob.page.locator("#members-list li")).to_have_count(2)
    expect(bob.page.get_by_role("button", name="Leave room")).to_be_visible()
    expect(bob.page.locator("#member-add")).to_have_count(0)

    alice.page.get_by_role("button", name="Rename").click()
    alice.page.get_by_label("Room name").fill("Launch plans")
    alice.page.get_by_label("Room name").press("Enter")
    expect(bob.page.locator(".room-title h1")).to_have_text(
        "Launch plans", timeout=LIVE_MS
    )
    expect(entry(bob.page, slug)).to_contain_text("Launch plans")

    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    alice.page.on("dialog", answer)
    members.get_by_role("button", name="Remove bob").click()
    expect(members.locator("li[data-username='bob']")).to_have_count(0)
    bob.wait_state("closed", timeout=LIVE_MS)
    expect(bob.banner).to_contain_text("no longer have access")
    assert len(asked) == 1
    assert "Remove bob" in asked[0]


# A Notification API that records what the page shows, and a tab that can
# be hidden at will: headless Chromium has neither a permission prompt nor
# a way to hide a tab.
FAKE_NOTIFICATIONS = """
window.__shown = [];
window.__asked = 0;
window.Notification = class {
  static permission = "default";
  static async requestPermission() {
    window.__asked += 1;
    window.Notification.permission = "granted";
    return "granted";
  }
  constructor(title, options = {}) {
    window.__shown.push([title, options.body ?? null]);
  }
  addEventListener() {}
  close() {}
};
Object.defineProperty(document, "hidden", { get: () => window.__hidden === true });
"""


def test_mentions_notify_in_a_hidden_tab_once_asked_for(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Permission is asked on the button's click only; then a mention, in
    this room or another, shows a notification while the tab is hidden."""
    other = f"{slug}-b"
    deployment.create_room(slug, name="Alpha")
    deployment.create_room(other, name="Bravo")
    alice = browsing.open_room(
        deployment.url(0),
        slug,
        user="alice",
        prepare=lambda page: page.add_init_script(FAKE_NOTIFICATIONS),
    )
    alice.wait_open()
    assert alice.page.evaluate("window.__asked") == 0

    alice.page.get_by_role("button", name="Notify me of mentions").click()
    expect(alice.page.locator("#notify-state")).to_contain_text("notified")
    assert alice.page.evaluate("window.__asked") == 1

    alice.page.evaluate("window.__hidden = true")
    deployment.post(other, "@alice over here", user="bob", instance=1)
    deployment.post(slug, "and @alice here", user="bob", instance=1)
    alice.page.wait_for_function("() => window.__shown.length === 2", timeout=LIVE_MS)
    assert sorted(alice.page.evaluate("window.__shown")) == [
        ["bob mentioned you in Alpha", "and @alice here"],
        ["bob mentioned you in Bravo", None],
    ]
