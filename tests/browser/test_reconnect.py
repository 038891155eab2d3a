"""The room page across server restarts and lost frames: nothing lost, nothing twice."""

import contextlib
import json
import re
import sqlite3
import time

import pytest
from playwright.sync_api import WebSocketRoute, expect

from harness.deployment import Deployment
from harness.waiting import wait_until
from tests.browser.browsing import NETWORK_ERRORS, Browsing

pytestmark = pytest.mark.browser

ROOM_SOCKET = re.compile(r"/ws/rooms/")


def test_page_resumes_after_its_server_restarts_with_every_message_once_in_order(
    pair: Deployment, browsing: Browsing, slug: str
) -> None:
    """Restart the instance the page is on: it reconnects by itself and resumes.

    Messages posted while it was down (through the other instance) and right
    after it came back arrive exactly once, in seq order.
    """
    browsing.allow_console_errors(*NETWORK_ERRORS)
    server = pair.instances[0]
    pair.create_room(slug)
    pair.post(slug, "before the page", user="bob")
    alice = browsing.open_room(pair.url(0), slug, user="alice")
    alice.wait_open()
    alice.send("from the page")
    alice.expect_bodies(["before the page", "from the page"])

    server.terminate()
    alice.wait_state("reconnecting", timeout=5_000)
    expect(alice.banner).to_contain_text("Connection lost")
    while_down = [f"while down {n}" for n in range(3)]
    for body in while_down:
        pair.post(slug, body, user="bob", instance=1)
    server.start()
    after_restart = [f"after restart {n}" for n in range(2)]
    for body in after_restart:
        pair.post(slug, body, user="bob", instance=0)

    alice.wait_open()
    alice.expect_bodies(
        ["before the page", "from the page", *while_down, *after_restart]
    )
    assert alice.seqs() == list(range(1, 8))
    expect(alice.banner).to_be_hidden()


def test_message_typed_while_disconnected_is_delivered_once_after_reconnect(
    pair: Deployment, browsing: Browsing, slug: str
) -> None:
    """The composer works offline: the message waits, then goes out once."""
    browsing.allow_console_errors(*NETWORK_ERRORS)
    server = pair.instances[0]
    pair.create_room(slug)
    alice = browsing.open_room(pair.url(0), slug, user="alice")
    bob = browsing.open_room(pair.url(0), slug, user="bob")
    alice.wait_open()
    bob.wait_open()

    server.terminate()
    alice.wait_state("reconnecting", timeout=5_000)
    alice.send("typed while offline")
    pending = alice.items.filter(has_text="typed while offline")
    expect(pending).to_have_attribute("data-pending", "queued")
    expect(alice.banner).to_contain_text("1 unsent message")
    server.start()

    alice.expect_bodies(["typed while offline"])
    bob.expect_bodies(["typed while offline"])
    stored = [message["body"] for message in pair.messages(slug)]
    assert stored == ["typed while offline"]
    expect(alice.page.locator("#messages [data-client-id]")).to_have_count(0)


@pytest.mark.parametrize("lost", ["send", "ack"])
def test_unacked_message_is_resent_with_the_same_client_id_and_stored_once(
    deployment: Deployment, browsing: Browsing, slug: str, lost: str
) -> None:
    """The link dies after a send, before its ack; after reconnecting, the
    page resends with the same client_id (or finds it in the replay), and the
    server stores it once.
    """
    deployment.create_room(slug)
    sent_client_ids: list[str] = []
    links: list[WebSocketRoute] = []

    def relay(page_side: WebSocketRoute) -> None:
        server_side = page_side.connect_to_server()
        first_link = not links
        links.append(page_side)

        def page_to_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "send":
                sent_client_ids.append(frame["client_id"])
                if first_link and lost == "send":
                    page_side.close(code=4012)  # the frame never reaches the server
                    server_side.close()
                    return
            server_side.send(message)

        def server_to_page(message: str | bytes) -> None:
            if first_link and lost == "ack" and json.loads(message)["type"] == "ack":
                page_side.close(code=4012)  # stored, but the page never hears
                server_side.close()
                return
            page_side.send(message)

        page_side.on_message(page_to_server)
        server_side.on_message(server_to_page)

    room = browsing.open_room(
        deployment.url(0),
        slug,
        user="alice",
        prepare=lambda page: page.route_web_socket(ROOM_SOCKET, relay),
    )
    room.wait_open()

    room.send("exactly once")

    # page.evaluate lets Playwright run the relay's callbacks while polling.
    wait_until(
        lambda: room.page.evaluate("true") and len(links) == 2,
        timeout=10,
        message="the page reconnected",
    )
    room.wait_open()
    room.expect_bodies(["exactly once"])
    assert len(set(sent_client_ids)) == 1, sent_client_ids
    if lost == "send":
        assert len(sent_client_ids) == 2, "the lost send should have been resent"
    assert [m["body"] for m in deployment.messages(slug)] == ["exactly once"]


def test_a_connection_limit_refusal_is_retried_after_its_hint(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """A 4429 close (a limit refused the connection) is not "access lost":
    the page says why, stays away at least as long as the server asked, then
    connects again."""
    browsing.allow_console_errors(*NETWORK_ERRORS)
    deployment.create_room(slug)
    hint_ms = 3000
    opened_at: list[float] = []
    refused_at: list[float] = []

    def relay(page_side: WebSocketRoute) -> None:
        opened_at.append(time.monotonic())
        if len(opened_at) == 1:
            page_side.send(
                json.dumps(
                    {
                        "type": "error",
                        "code": "too_many_connections",
                        "detail": "You have 20 connections open already; close some.",
                        "client_id": None,
                        "retry_after_ms": hint_ms,
                    }
                )
            )
            page_side.close(code=4429, reason=f"retry_after_ms={hint_ms}")
            refused_at.append(time.monotonic())
            return
        page_side.connect_to_server()

    room = browsing.open_room(
        deployment.url(0),
        slug,
        user="alice",
        prepare=lambda page: page.route_web_socket(ROOM_SOCKET, relay),
    )
    expect(room.page.get_by_text("20 connections open already")).to_be_visible()
    room.wait_open(timeout=15_000)
    assert len(opened_at) == 2, opened_at
    # Without the hint the first retry would come within 0.5 s. (Playwright
    # runs these callbacks when it next hears from the browser, hence 0.9.)
    assert opened_at[1] - refused_at[0] >= 0.9 * hint_ms / 1000, opened_at


# What the page's own reconnect code (connection.js) waits after each close,
# sampled 400 times in the browser. Each bound below fails by chance with a
# probability under 1e-30 (a uniform draw 400 times in a row on one side).
RECONNECT_DELAYS = """async () => {
  const script = document.querySelector('script[type="module"]');
  const m = await import(new URL("connection.js", script.src));
  const sample = (f) => Array.from({ length: 400 }, f);
  return {
    busy: sample(() => m.reconnectDelay(4503, "retry_window_ms=3000", 5)),
    shutdown: sample(() => m.reconnectDelay(4012, "retry_window_ms=20000", 0)),
    bare: sample(() => m.reconnectDelay(1012, "", 0)),
    limit: sample(() => m.reconnectDelay(4429, "retry_after_ms=3000", 0)),
    lost: sample(() => m.reconnectDelay(1006, "", 3)),
  };
}"""


def test_reconnects_follow_the_servers_windows_with_full_jitter(
    deployment: Deployment, browsing: Browsing, slug: str
) -> None:
    """4503: anywhere within its window, whatever the attempt; 4012: a share
    of its window for the first try (5 s without one); 4429: at least its
    hint; anything else: full jitter, 0 up to the backoff ceiling."""
    deployment.create_room(slug)
    room = browsing.open_room(deployment.url(0), slug, user="alice")
    room.wait_open()
    delays = room.page.evaluate(RECONNECT_DELAYS)
    assert 0 <= min(delays["busy"]) < 500
    assert 2500 < max(delays["busy"]) <= 3000
    assert min(delays["shutdown"]) < 3000
    assert 17_000 < max(delays["shutdown"]) <= 20_000
    assert 4000 < max(delays["bare"]) <= 5000
    assert min(delays["limit"]) >= 3000
    assert max(delays["limit"]) <= 6000
    assert min(delays["lost"]) < 500, "full jitter starts at 0"
    assert 3500 < max(delays["lost"]) <= 4000


def restore_from_backup(pair: Deployment, slug: str, last_seq: int) -> None:
    """What a restore from an older backup does to a room: the messages after
    ``last_seq`` are gone, and their seqs will be given out again."""
    database = pair.env["DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as db, db:
        (room_id,) = db.execute(
            "SELECT id FROM core_room WHERE slug = ?", [slug]
        ).fetchone()
        db.execute(
            "DELETE FROM core_message WHERE room_id = ? AND seq > ?",
            [room_id, last_seq],
        )
        db.execute(
            "UPDATE core_room SET last_seq = ? WHERE id = ?", [last_seq, room_id]
        )


def test_a_page_open_across_a_restore_from_backup_shows_the_room_as_it_now_is(
    pair: Deployment, browsing: Browsing, slug: str
) -> None:
    """The database is restored from a backup while a page is open: the page
    drops the messages the room no longer holds, shows those it does, and
    shows new messages that reuse the lost seqs (not dropped as repeats)."""
    browsing.allow_console_errors(*NETWORK_ERRORS)
    server = pair.instances[0]
    pair.create_room(slug)
    for body in ("kept 1", "kept 2", "lost 3", "lost 4"):
        pair.post(slug, body, user="bob")
    alice = browsing.open_room(pair.url(0), slug, user="alice")
    alice.wait_open()
    alice.expect_bodies(["kept 1", "kept 2", "lost 3", "lost 4"])

    server.terminate()
    alice.wait_state("reconnecting", timeout=5_000)
    restore_from_backup(pair, slug, last_seq=2)
    server.start()

    alice.wait_open()
    alice.expect_bodies(["kept 1", "kept 2"])
    pair.post(slug, "new 3", user="bob", instance=0)
    alice.expect_bodies(["kept 1", "kept 2", "new 3"])
    assert alice.seqs() == [1, 2, 3]
