"""Search in the browser: the top bar's box finds a message and its result
opens the room at that message, scrolled to and marked; on a phone too, by
keyboard alone."""

import re
import secrets

import pytest
from playwright.sync_api import Page, expect

from tests.browser.browsing import PHONE, Browsing
from tests.browser.deployment import Deployment
from tests.browser.room_page import RoomPage

pytestmark = pytest.mark.browser

# Messages posted after the one searched for: more than the room page
# embeds (50), so the result is not among the latest.
LATER = 60


def room_with_an_old_message(deployment: Deployment, slug: str) -> tuple[str, int]:
    """A private room of alice's whose word-of-the-test message is followed
    by ``LATER`` others; the word and that message's seq."""
    word = f"kumquat{secrets.token_hex(3)}"
    deployment.create_room(slug, private=True, name="Fruit Stand")
    seq = deployment.post(slug, f"Who ordered the {word} crate?", user="alice")
    for n in range(LATER):
        deployment.post(slug, f"later message {n}", user="alice")
    return word, seq


def results(page: Page):
    return page.locator("#search-results .search-hit")


def test_search_finds_a_message_and_jumps_to_it(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    word, seq = room_with_an_old_message(deployment, slug)
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    alice.wait_open()
    page = alice.page

    page.locator("#search-q").fill(word.upper()[:-2])  # a prefix, any case
    page.locator("#search-q").press("Enter")
    expect(results(page)).to_have_count(1)
    hit = results(page).first
    expect(hit).to_contain_text("#Fruit Stand")
    expect(hit.locator("mark")).to_have_text(word)
    snippet = hit.locator(".search-snippet")
    expect(snippet).to_have_text(f"Who ordered the {word} crate?")
    expect(page.locator("#search-results .search-status")).to_have_text(
        re.compile(r"^1 message match")
    )

    hit.click()
    page.wait_for_url(re.compile(rf"/rooms/{slug}/\?at={seq}$"))
    room = RoomPage(page)
    room.wait_open()
    target = room.row(seq)
    expect(target).to_have_class(re.compile(r"\bmsg-target\b"))
    expect(target.locator(".msg-body")).to_have_text(f"Who ordered the {word} crate?")
    expect(target).to_be_in_viewport()
    expect(target).to_be_focused()
    # The rest of the room followed (the socket resumed after the page's
    # messages), and the message is still on show.
    expect(room.row(seq + LATER)).to_have_count(1)
    expect(target).to_be_in_viewport()
    # Earlier history is one click away, as on any room page.
    expect(page.locator("#load-earlier")).to_be_hidden()


def test_guests_find_nothing_in_private_rooms(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    word, _ = room_with_an_old_message(deployment, slug)
    page = browsing.new_page()
    page.goto(f"{deployment.url(0)}/")
    page.locator("#search-q").fill(word)
    page.locator("#search-q").press("Enter")
    expect(page.locator("#search-results .search-status")).to_have_text(
        f"No messages match “{word}”."
    )
    expect(results(page)).to_have_count(0)


def test_on_a_phone_by_keyboard_alone(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    word, seq = room_with_an_old_message(deployment, slug)
    state = browsing.signed_in_state(deployment.url(0), "alice")
    page = browsing.new_page(storage_state=state, viewport=PHONE)
    page.goto(f"{deployment.url(0)}/")
    field = page.locator("#search-q")
    expect(field).to_be_in_viewport()
    field.focus()
    page.keyboard.type(word)
    page.keyboard.press("Enter")
    expect(results(page)).to_have_count(1)
    panel = page.locator("#search-results")
    box = panel.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= PHONE["width"]
    # Tab goes from the box past its button to the result; Enter opens it.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(results(page).first).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"\?at={seq}$"))
    room = RoomPage(page)
    room.wait_open()
    expect(room.row(seq)).to_have_class(re.compile(r"\bmsg-target\b"))
    expect(room.row(seq)).to_be_in_viewport()
    # Escape closes a result list.
    field = page.locator("#search-q")
    field.fill(word)
    field.press("Enter")
    expect(panel).to_be_visible()
    field.press("Escape")
    expect(panel).to_be_hidden()


def test_markup_in_a_result_is_text_and_runs_nothing(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    word = f"quince{secrets.token_hex(3)}"
    deployment.create_room(slug)
    hostile = f'<img src=x onerror="window.__pwned=1"><b>{word}</b>'
    deployment.post(slug, hostile, user="alice")
    page = browsing.new_page()
    page.goto(f"{deployment.url(0)}/")
    page.locator("#search-q").fill(word)
    page.locator("#search-q").press("Enter")
    expect(results(page)).to_have_count(1)
    snippet = results(page).first.locator(".search-snippet")
    expect(snippet).to_have_text(hostile)
    expect(snippet.locator("mark")).to_have_text(word)
    assert snippet.locator("img, b").count() == 0
    assert page.evaluate("window.__pwned") is None
