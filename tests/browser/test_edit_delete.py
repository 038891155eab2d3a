"""Editing and deleting messages on the room page (issue 17): in place, live
in every other browser, and caught up by a page that was away."""

import json
import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, WebSocket, WebSocketRoute, expect

from harness.deployment import Deployment
from tests.browser.browsing import NETWORK_ERRORS, Browsing

pytestmark = pytest.mark.browser

ROOM_SOCKET = re.compile(r"/ws/rooms/")


def record_frames(sent: list[dict[str, object]]) -> Callable[[Page], None]:
    """A ``prepare`` for ``open_room``: every frame the page sends, parsed."""

    def on_socket(socket: WebSocket) -> None:
        socket.on("framesent", lambda payload: sent.append(json.loads(payload)))

    return lambda page: page.on("websocket", on_socket)


def sent_types(sent: list[dict[str, object]]) -> list[object]:
    return [frame["type"] for frame in sent if frame["type"] not in {"ping", "typing"}]


def test_an_edit_in_place_shows_live_in_another_browser_as_edited(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Alice edits her message in its row; Bob, on another instance, sees the
    new text and "edited" at once, and the edit takes no row of its own."""
    deployment.create_room(slug)
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    bob = browsing.open_room(deployment.url(1), slug, user="bob")
    alice.wait_open()
    bob.wait_open()
    alice.send("Deploy at 17:00 <b>sharp</b>")
    bob.expect_bodies(["Deploy at 17:00 <b>sharp</b>"])
    expect(bob.tool(1, re.compile("Edit"))).to_have_count(0)

    alice.tool(1, "Edit your message").click()
    editor = alice.row(1).get_by_role("textbox", name="Edit message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Deploy at 17:00 <b>sharp</b>")
    editor.fill("Deploy at 18:00 <b>sharp</b>")
    editor.press("Shift+Enter")  # a new line, as in the composer
    editor.press_sequentially("(moved)")
    editor.press("Enter")

    new_text = "Deploy at 18:00 <b>sharp</b>\n(moved)"
    for page in (alice, bob):
        page.expect_view([[1, new_text, "edited"]])
        expect(page.row(1).locator(".msg-edited")).to_have_text("edited")
        expect(page.page.locator("#messages b")).to_have_count(0)
    expect(alice.body_field).to_be_focused()
    assert deployment.view(slug) == [[1, new_text, "edited"]]
    [edit] = [m for m in deployment.messages(slug) if m.get("kind") == "edit"]
    assert (edit["seq"], edit["target"]) == (2, 1)

    # The change's seq counts as held: the next message follows without a gap.
    bob.send("ok")
    for page in (alice, bob):
        page.expect_view([[1, new_text, "edited"], [3, "ok", ""]])


def test_a_delete_asks_first_and_shows_live_as_message_deleted(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Delete asks for a confirm (cancelling changes nothing); once accepted,
    everyone sees "message deleted" in place of the text, with no controls."""
    deployment.create_room(slug)
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    bob = browsing.open_room(deployment.url(1), slug, user="bob")
    alice.wait_open()
    bob.wait_open()
    alice.send("wrong room, sorry")
    alice.send("kept")
    bob.expect_bodies(["wrong room, sorry", "kept"])

    question = alice.delete(1, accept=False)
    assert question.startswith("Delete this message?")
    expect(alice.tool(1, "Delete your message")).to_be_visible()
    alice.delete(1)

    expected = [[1, "message deleted", "deleted"], [2, "kept", ""]]
    for page in (alice, bob):
        page.expect_view(expected)
        expect(page.row(1).get_by_role("button")).to_have_count(0)
    assert deployment.view(slug) == expected
    kinds = [m.get("kind") for m in deployment.messages(slug)]
    assert kinds == [None, None, "delete"], "one deletion, after one confirm"


def test_up_arrow_edits_the_last_own_message_and_escape_cancels(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Up in an empty composer opens the last own message that is not
    deleted; Escape closes it, sends nothing, and leaves the text as it was."""
    deployment.create_room(slug)
    first = deployment.post(slug, "alice's first", user="alice")
    second = deployment.post(slug, "alice's second", user="alice")
    deployment.post(slug, "bob's", user="bob")
    deployment.delete(slug, second, user="alice")
    sent: list[dict[str, object]] = []
    alice = browsing.open_room(
        deployment.url(0), slug, user="alice", prepare=record_frames(sent)
    )
    alice.wait_open()
    editor = alice.page.get_by_role("textbox", name="Edit message")

    alice.body_field.fill("not empty")
    alice.body_field.press("ArrowUp")
    expect(editor).to_have_count(0)
    alice.body_field.fill("")
    alice.body_field.press("ArrowUp")

    expect(alice.row(first).get_by_role("textbox", name="Edit message")).to_be_focused()
    editor.press_sequentially(" and more")
    editor.press("Escape")

    expect(editor).to_have_count(0)
    expect(alice.body_field).to_be_focused()
    expected = [
        [first, "alice's first", ""],
        [second, "message deleted", "deleted"],
        [3, "bob's", ""],
    ]
    alice.expect_view(expected)
    assert "edit" not in sent_types(sent)
    assert deployment.view(slug) == expected

    # Up again, and Enter saves: the keyboard alone edits.
    alice.body_field.press("ArrowUp")
    editor.press("End")
    editor.press_sequentially(" (edited by keyboard)")
    editor.press("Enter")
    expected[0] = [first, "alice's first (edited by keyboard)", "edited"]
    alice.expect_view(expected)
    assert deployment.view(slug) == expected
    assert sent_types(sent).count("edit") == 1


def test_a_page_that_was_away_catches_up_on_edits_and_deletions(
    pair: Deployment, browsing: Browsing, slug: str
) -> None:
    """Alice's page loses its server while Bob edits and deletes through the
    other instance; once back it shows exactly what the database holds. It
    resumes after the last change it saw: changes count as seqs held."""
    browsing.allow_console_errors(*NETWORK_ERRORS)
    server = pair.instances[0]
    pair.create_room(slug)
    seqs = [pair.post(slug, f"bob {n}", user="bob") for n in range(1, 5)]
    sockets: list[str] = []
    alice = browsing.open_room(
        pair.url(0),
        slug,
        user="alice",
        prepare=lambda page: page.on("websocket", lambda ws: sockets.append(ws.url)),
    )
    alice.wait_open()
    alice.expect_bodies(["bob 1", "bob 2", "bob 3", "bob 4"])
    seen = pair.edit(slug, seqs[0], "bob 1, again", user="bob")["seq"]  # live
    alice.expect_view(pair.view(slug))
    assert alice.view()[0] == [1, "bob 1, again", "edited"]

    server.terminate()
    alice.wait_state("reconnecting", timeout=5_000)
    pair.edit(slug, seqs[0], "bob 1, fixed", user="bob", instance=1)
    pair.delete(slug, seqs[1], user="bob", instance=1)
    pair.edit(slug, seqs[2], "bob 3, take 2", user="bob", instance=1)
    pair.edit(slug, seqs[2], "bob 3, take 3", user="bob", instance=1)
    pair.edit(slug, seqs[3], "bob 4, soon gone", user="bob", instance=1)
    pair.delete(slug, seqs[3], user="alice", instance=1)  # the room's owner
    late = pair.post(slug, "bob 5", user="bob", instance=1)
    pair.edit(slug, late, "bob 5, edited", user="bob", instance=1)
    server.start()

    alice.wait_open()
    resumed_after = {url.rpartition("?")[2] for url in sockets[1:]}
    # Signed in, the page's one socket also watches the other rooms.
    assert resumed_after == {f"after={seen}&watch=1"}, sockets
    expected = pair.view(slug)
    assert expected == [
        [1, "bob 1, fixed", "edited"],
        [2, "message deleted", "deleted"],
        [3, "bob 3, take 3", "edited"],
        [4, "message deleted", "deleted"],
        [late, "bob 5, edited", "edited"],
    ]
    alice.expect_view(expected)

    # A fresh page shows the same, from the page's own messages.
    fresh = browsing.open_room(pair.url(0), slug, user="carol")
    fresh.wait_open()
    fresh.expect_view(expected)


def test_a_change_missed_live_is_filled_from_history(
    pair: Deployment, browsing: Browsing, slug: str
) -> None:
    """An edit stored through another instance does not reach the page live;
    its seq is a gap once the next live message comes, and filling it (or
    the server's delivery bound, whichever is first) applies the edit."""
    pair.create_room(slug)
    seq = pair.post(slug, "first try", user="bob")
    alice = browsing.open_room(pair.url(0), slug, user="alice")
    alice.wait_open()
    alice.expect_bodies(["first try"])

    pair.edit(slug, seq, "second try", user="bob", instance=1)  # not live here
    pair.post(slug, "posted here", user="bob", instance=0)

    alice.expect_view([[1, "second try", "edited"], [3, "posted here", ""]])


def test_earlier_pages_show_messages_as_they_are_now(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Messages from "Load earlier" come as they are now, though the page
    holds their newest changes already and the older page their first."""
    deployment.create_room(slug)
    deployment.post(slug, "v0", user="alice")
    deployment.post(slug, "doomed", user="alice")
    deployment.edit(slug, 1, "v1", user="alice")  # seq 3, on the older page
    for n in range(50):
        deployment.post(slug, f"filler {n}", user="bob")
    deployment.edit(slug, 1, "v2", user="alice")  # on the latest page
    deployment.delete(slug, 2, user="alice")  # likewise
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    alice.wait_open()
    expect(alice.items).to_have_count(48)  # the latest 50 seqs hold 2 changes

    alice.page.get_by_role("button", name="Load earlier messages").click()

    expected = deployment.view(slug)
    assert expected[:2] == [[1, "v2", "edited"], [2, "message deleted", "deleted"]]
    alice.expect_view(expected)
    expect(alice.page.locator("#history-start")).to_be_visible()


def test_an_edit_that_arrives_late_does_not_undo_a_newer_one(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Live frames may come out of order: a first edit delivered after the
    second (its frame still has the first text) changes nothing."""
    deployment.create_room(slug)
    seq = deployment.post(slug, "v0", user="alice")
    held: list[str | bytes] = []

    def reorder(page_side: WebSocketRoute) -> None:
        server_side = page_side.connect_to_server()

        def server_to_page(message: str | bytes) -> None:
            if json.loads(message).get("kind") == "edit" and not held:
                held.append(message)  # the first edit waits for the second
                return
            page_side.send(message)
            if json.loads(message).get("kind") == "edit":
                page_side.send(held[0])

        server_side.on_message(server_to_page)
        page_side.on_message(server_side.send)

    bob = browsing.open_room(
        deployment.url(0),
        slug,
        user="bob",
        prepare=lambda page: page.route_web_socket(ROOM_SOCKET, reorder),
    )
    bob.wait_open()
    deployment.edit(slug, seq, "v1", user="alice")
    deployment.edit(slug, seq, "v2", user="alice")

    bob.expect_view([[seq, "v2", "edited"]])
    deployment.post(slug, "later", user="alice")  # after the late frame
    bob.expect_view([[seq, "v2", "edited"], [4, "later", ""]])


def test_the_owner_may_delete_anyones_message_and_a_member_only_their_own(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """Alice owns the room: Delete on every message, Edit on her own only.
    Carol is a plain member: Edit and Delete on her own messages, nothing on
    others'."""
    deployment.create_room(slug, owner="alice")
    spam = deployment.post(slug, "buy cheap watches", user="bob")
    own = deployment.post(slug, "carol here", user="carol")
    alice = browsing.open_room(deployment.url(0), slug, user="alice")
    carol = browsing.open_room(deployment.url(1), slug, user="carol")
    alice.wait_open()
    carol.wait_open()

    expect(alice.root).to_have_attribute("data-can-moderate", "1")
    expect(carol.root).to_have_attribute("data-can-moderate", "0")
    for seq in (spam, own):
        row = alice.row(seq)
        expect(row.get_by_role("button", name="Delete message")).to_be_visible()
        expect(row.get_by_role("button", name=re.compile("Edit"))).to_have_count(0)
    expect(carol.row(spam).get_by_role("button")).to_have_count(0)
    expect(carol.tool(own, "Edit your message")).to_be_visible()
    expect(carol.tool(own, "Delete your message")).to_be_visible()

    question = alice.delete(spam)
    assert "by bob" in question

    for page in (alice, carol):
        page.expect_view(
            [[spam, "message deleted", "deleted"], [own, "carol here", ""]]
        )
    audit = deployment.api("GET", f"/api/rooms/{slug}/deletions/", user="alice")
    [deletion] = audit["deletions"]
    assert (deletion["target"], deletion["deleted_by"]) == (spam, "alice")


def test_staff_may_delete_any_message_in_any_room(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """A staff user who does not own the room gets Delete on every message."""
    deployment.ensure_staff("stella")
    deployment.create_room(slug, owner="alice")
    seq = deployment.post(slug, "off-topic", user="bob")
    stella = browsing.open_room(deployment.url(0), slug, user="stella")
    bob = browsing.open_room(deployment.url(1), slug, user="bob")
    stella.wait_open()
    bob.wait_open()

    stella.delete(seq)

    for page in (stella, bob):
        page.expect_view([[seq, "message deleted", "deleted"]])


def test_an_edit_made_offline_waits_and_is_stored_once_after_reconnect(
    pair: Deployment, browsing: Browsing, slug: str
) -> None:
    """Edits queue like messages while the page is offline, saying so, and
    go out once it has resumed; a deletion likewise."""
    browsing.allow_console_errors(*NETWORK_ERRORS)
    server = pair.instances[0]
    pair.create_room(slug)
    alice = browsing.open_room(pair.url(0), slug, user="alice")
    alice.wait_open()
    alice.send("draft")
    alice.send("to be removed")
    alice.expect_bodies(["draft", "to be removed"])

    server.terminate()
    alice.wait_state("reconnecting", timeout=5_000)
    alice.edit(1, "final")
    alice.delete(2)
    expect(alice.row(1)).to_contain_text("Edit waiting for connection")
    expect(alice.row(1).locator(".msg-body")).to_have_text("final")
    expect(alice.row(2)).to_contain_text("Deletion waiting for connection")
    server.start()

    expected = [[1, "final", "edited"], [2, "message deleted", "deleted"]]
    alice.expect_view(expected)
    assert pair.view(slug) == expected
    kinds = [m.get("kind") for m in pair.messages(slug)]
    assert kinds == [None, None, "edit", "delete"]


def test_a_refused_edit_says_why_and_shows_the_stored_text_again(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """The message was deleted meanwhile (its deletion never reached this
    page): the edit gets not_found, the page says so and drops the draft."""
    deployment.create_room(slug, owner="alice")
    seq = deployment.post(slug, "original", user="carol")

    def drop_deletions(page_side: WebSocketRoute) -> None:
        server_side = page_side.connect_to_server()

        def server_to_page(message: str | bytes) -> None:
            if json.loads(message).get("kind") != "delete":
                page_side.send(message)

        server_side.on_message(server_to_page)
        page_side.on_message(server_side.send)

    carol = browsing.open_room(
        deployment.url(0),
        slug,
        user="carol",
        prepare=lambda page: page.route_web_socket(ROOM_SOCKET, drop_deletions),
    )
    carol.wait_open()
    deployment.delete(slug, seq, user="alice")

    carol.edit(seq, "rewritten")

    expect(carol.page.locator("#notice")).to_contain_text("has been deleted")
    carol.expect_view([[seq, "original", ""]])
    expect(carol.tool(seq, "Edit your message")).to_be_visible()
