"""The pages around the room, a whole visit without console errors, screenshots."""

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from harness.app import manage
from harness.deployment import Deployment
from tests.browser.browsing import ARTIFACTS, DESKTOP, PHONE, PROJECT_ROOT, Browsing
from tests.browser.deployment import on_sqlite

pytestmark = pytest.mark.browser

SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
MAX_SCREENSHOT_BYTES = 300_000


def test_a_visit_from_sign_up_to_log_out_logs_no_console_errors(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Sign up, create a room, chat, look at the rooms, log out: no errors."""
    page = browsing.new_page()
    base = deployment.url(0)
    username = f"dana{os.urandom(3).hex()}"
    page.goto(f"{base}/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill("a long passphrase 42")
    page.get_by_label("Password confirmation").fill("a long passphrase 42")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator(".notice")).to_contain_text(
        f"Welcome to Switchboard, {username}"
    )

    page.get_by_label("Name").fill("Launch party")
    page.get_by_label("Slug").fill(slug)
    page.get_by_role("button", name="Create room").click()
    page.wait_for_url(f"{base}/rooms/{slug}/")
    expect(page.locator("#room")).to_have_attribute("data-ws-state", "open")
    expect(page.locator("#presence")).to_contain_text(username)
    page.locator("#composer [name=body]").fill("first!")
    page.keyboard.press("Enter")
    expect(page.locator("#messages > li[data-seq='1']")).to_contain_text("first!")

    page.get_by_role("link", name="Switchboard").click()
    expect(page.locator("#rooms")).to_contain_text("Launch party")
    expect(page.locator("#rooms")).to_contain_text("1 message · active just now")
    page.get_by_role("button", name="Log out").click()
    account = page.get_by_role("navigation", name="Account")
    expect(account.get_by_role("link", name="Log in")).to_be_visible()
    page.goto(f"{base}/accounts/login/")
    expect(page.get_by_label("Username")).to_be_focused()

    assert browsing.console_errors == []


def _fill_demo_rooms(deployment: Deployment, slug: str) -> None:
    # The other rooms of the sidebar: unread messages, a mention of alice.
    deployment.create_room("design-crit", name="Design crit", private=True)
    deployment.create_room("general", name="General")
    deployment.create_room("incidents", name="Incidents")
    for body in ("Lunch at 12:30?", "The new coffee machine is in.", "🎉"):
        deployment.post("general", body, user="bob")
    deployment.post("incidents", "@alice the p99 alert fired again", user="carol")
    deployment.create_room(slug, name="Release planning")
    script = [
        ("alice", "Morning! Is the staging deploy done?"),
        ("bob", "Yes, finished ten minutes ago. Migrations ran clean."),
        ("bob", "Next up: the Redis failover drill."),
        ("carol", "I'll keep an eye on the p99 latency dashboard while you run it."),
    ]
    for user, body in script:
        deployment.post(slug, body, user=user)
    # A system message, as cron would post it.
    manage(
        "announce",
        slug,
        "Maintenance window tonight, 22:00-22:30 UTC.",
        env=deployment.env,
    )
    deployment.post(
        slug,
        "Thanks both. The room page now resumes with ?after= after a restart "
        "and fills gaps from history — try killing a server mid-conversation.",
        user="alice",
    )
    deployment.post(slug, "Ha, on it 🙂", user="carol")


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=path)
    size = path.stat().st_size
    assert size < MAX_SCREENSHOT_BYTES, f"{name} is {size} bytes"
    # docs/screenshots/ is refreshed on request only, so that an ordinary
    # test run leaves the work tree clean.
    if os.environ.get("SWITCHBOARD_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / name)


@pytest.fixture
def showcase(tmp_path: Path, sqlite_template: Path) -> Iterator[Deployment]:
    """An instance of its own: the sidebar shows the demo's rooms only.

    Request it before ``browsing``: the pages close before the server does.
    """
    app = on_sqlite(tmp_path, sqlite_template, name="showcase")
    try:
        yield app.start()
    finally:
        app.close()


def test_room_page_screenshots_at_desktop_and_phone_widths(
    showcase: Deployment, browsing: Browsing
) -> None:
    """The room page as people see it, for review and for the README: the
    rooms sidebar with its counts, and on a phone the sidebar closed and open."""
    slug = "release-planning"
    _fill_demo_rooms(showcase, slug)
    bob = browsing.open_room(showcase.url(), slug, user="bob")
    views = {
        name: browsing.open_room(showcase.url(), slug, user="alice", viewport=size)
        for name, size in (("room-desktop.png", DESKTOP), ("room-phone.png", PHONE))
    }
    for room in (bob, *views.values()):
        room.wait_open()

    bob.body_field.press_sequentially("Running it n")

    for name, alice in views.items():
        expect(alice.presence).to_contain_text("bob")
        expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
        incidents = alice.page.locator("#rooms-list > li[data-slug='incidents']")
        expect(incidents).to_have_attribute("data-mentions", "1")
        general = alice.page.locator("#rooms-list > li[data-slug='general']")
        expect(general).to_have_attribute("data-unread", "3")
        alice.body_field.fill("Go for it")
        _screenshot(alice.page, name)

    phone = views["room-phone.png"].page
    phone.get_by_role("button", name=re.compile("^Rooms")).click()
    expect(phone.locator("#rooms-nav")).to_be_in_viewport()
    expect(phone.locator("#rooms-list a[aria-current=page]")).to_be_focused()
    phone.mouse.move(PHONE["width"] - 10, PHONE["height"] // 2)  # no hover
    phone.wait_for_timeout(300)  # the panel's slide (0.2 s)
    _screenshot(phone, "rooms-phone.png")
