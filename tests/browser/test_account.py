"""The account page in a real browser: a password change ends the user's
other sessions (their room pages say access ended) and keeps this
browser's own room page live; the API token is shown masked and revoked.

On ``redis-postgres-2`` the two browsers use different instances, so the
revocation crosses instances.
"""

import os
import re

import pytest
from playwright.sync_api import Page, expect

from harness.http import api, sign_in
from tests.browser.browsing import PHONE, Browsing
from tests.browser.deployment import Deployment
from tests.browser.room_page import RoomPage

pytestmark = pytest.mark.browser

FIRST = "a long passphrase 42"
SECOND = "another long passphrase 43"


def sign_up(page: Page, base: str) -> str:
    """A fresh account (a password change must not touch the shared users)."""
    username = f"erin{os.urandom(3).hex()}"
    page.goto(f"{base}/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(FIRST)
    page.get_by_label("Password confirmation").fill(FIRST)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(f"{base}/")
    return username


def log_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(FIRST)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")


def test_a_password_change_ends_the_other_session_and_keeps_this_one(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    deployment.create_room(slug)
    here = browsing.new_page()
    username = sign_up(here, deployment.url(0))
    elsewhere = browsing.new_page()
    log_in(elsewhere, deployment.url(1), username)

    # A room open in each browser, on different instances where there are two.
    own_room = RoomPage(here.context.new_page())
    own_room.page.goto(f"{deployment.url(0)}/rooms/{slug}/")
    own_room.wait_open()
    other_room = RoomPage(elsewhere)
    other_room.page.goto(f"{deployment.url(1)}/rooms/{slug}/")
    other_room.wait_open()

    # A refused form is answered 400, which Chromium logs.
    browsing.allow_console_errors(re.compile(r"status of 400 \(Bad Request\)"))
    here.get_by_role("link", name="Account").click()
    here.wait_for_url(f"{deployment.url(0)}/account/")
    # A mistake first: a clear error on the field, nothing changed.
    here.get_by_label("Current password").fill("not my password")
    here.get_by_label("New password", exact=True).fill(SECOND)
    here.get_by_label("New password again").fill(SECOND)
    here.get_by_role("button", name="Change password").click()
    current = here.get_by_label("Current password")
    expect(current).to_have_attribute("aria-invalid", "true")
    expect(here.locator(".errorlist")).to_contain_text("entered incorrectly")
    other_room.wait_open(timeout=1_000)

    here.get_by_label("Current password").fill(FIRST)
    here.get_by_label("New password", exact=True).fill(SECOND)
    here.get_by_label("New password again").fill(SECOND)
    here.get_by_role("button", name="Change password").click()
    expect(here.locator(".notice")).to_contain_text(
        "Your password was changed. Signed out 1 other session."
    )

    # The other browser: its room page says access ended, its pages sign in.
    other_room.wait_state("closed", timeout=5_000)
    expect(other_room.banner).to_contain_text("no longer have access")
    expect(other_room.body_field).to_be_disabled()
    elsewhere.goto(f"{deployment.url(1)}/account/")
    expect(elsewhere).to_have_url(f"{deployment.url(1)}/accounts/login/?next=/account/")

    # This browser: its room page stayed live and still posts.
    own_room.wait_open(timeout=1_000)
    own_room.send("still here")
    own_room.expect_bodies(["still here"])
    here.reload()
    expect(here.get_by_role("heading", name="Change your password")).to_be_visible()


def test_the_api_token_is_shown_masked_and_revoked(
    deployment: Deployment, browsing: Browsing
) -> None:
    page = browsing.new_page(viewport=PHONE)
    base = deployment.url(0)
    username = sign_up(page, base)
    page.goto(f"{base}/account/")
    expect(page.locator("#no-token")).to_be_visible()

    key = sign_in(base, username, FIRST)
    page.reload()
    token = page.locator("#api-token")
    expect(token).to_contain_text(f"A token ending in {key[-4:]}")
    assert key not in page.content()

    # The phone layout: the nav's Account link and the button are reachable.
    expect(page.get_by_role("link", name="Account")).to_be_visible()
    page.get_by_role("button", name="Revoke token").click()
    expect(page.locator(".notice")).to_contain_text("Your API token was revoked.")
    expect(page.locator("#no-token")).to_be_visible()
    api(base, "GET", "/api/rooms/", token=key, expect=(401,))
