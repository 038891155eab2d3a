"""What a test does with the room page, through its stable hooks.

``#room[data-ws-state]``, ``#composer`` with its ``body`` field, ``#messages``
items with ``data-seq`` (pending own ones: ``data-client-id`` and
``data-pending``), and ``#presence``. Edited rows have a ``.msg-edited``
marker, deleted ones ``data-deleted``; Edit and Delete are buttons named
"Edit your message", "Delete your message" and "Delete message". Every wait
is on page state.
"""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Dialog, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

# Long enough for a server restart plus the client's backoff (capped at 10 s).
RECONNECT_TIMEOUT_MS = 20_000

_ITEMS_JS = """() => Array.from(document.querySelectorAll("#messages > li"), (li) => ({
  seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq),
  body: li.querySelector(".msg-body").textContent,
  author: li.dataset.author || null,
  pending: li.dataset.pending ?? null,
  clientId: li.dataset.clientId ?? null,
}))"""

_SETTLED_BODIES_ARE_JS = """(expected) => {
  const items = Array.from(document.querySelectorAll("#messages > li"));
  if (items.some((li) => li.dataset.seq === undefined)) return false;
  const bodies = items.map((li) => li.querySelector(".msg-body").textContent);
  return JSON.stringify(bodies) === JSON.stringify(expected);
}"""


# [seq, text, state] per row, as a person sees it: state "", "edited" or
# "deleted" (the text is then "message deleted").
_VIEW_JS = """() => Array.from(document.querySelectorAll("#messages > li"), (li) => [
  li.dataset.seq === undefined ? null : Number(li.dataset.seq),
  li.querySelector(".msg-body").textContent,
  li.dataset.deleted === "true"
    ? "deleted"
    : li.querySelector(".msg-edited") ? "edited" : "",
])"""

_VIEW_IS_JS = f"""(expected) => {{
  const view = ({_VIEW_JS})();
  const busy = document.querySelector(
    "#messages > li[data-changing], #messages > li:not([data-seq])"
  );
  return !busy && JSON.stringify(view) === JSON.stringify(expected);
}}"""


class RoomPage:
    """A browser tab on ``/rooms/<slug>/``."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.root = page.locator("#room")
        self.items = page.locator("#messages > li")
        self.body_field = page.locator("#composer [name=body]")
        self.presence = page.locator("#presence")
        self.banner = page.locator("#connection-banner")

    def wait_state(self, state: str, timeout: float = RECONNECT_TIMEOUT_MS) -> None:
        expect(self.root).to_have_attribute("data-ws-state", state, timeout=timeout)

    def wait_open(self, timeout: float = RECONNECT_TIMEOUT_MS) -> None:
        """Connected and resumed: replay done, sends go out."""
        self.wait_state("open", timeout)

    def send(self, text: str) -> None:
        """Type ``text`` into the composer and press Enter."""
        self.body_field.fill(text)
        self.body_field.press("Enter")

    def messages(self) -> list[dict[str, Any]]:
        """Every item of #messages, top to bottom."""
        return self.page.evaluate(_ITEMS_JS)

    def seqs(self) -> list[int | None]:
        return [item["seq"] for item in self.messages()]

    def bodies(self) -> list[str]:
        return [item["body"] for item in self.messages()]

    def expect_bodies(
        self, expected: list[str], timeout: float = RECONNECT_TIMEOUT_MS
    ) -> None:
        """Wait until #messages holds exactly ``expected``, all acked, in order."""
        try:
            self.page.wait_for_function(
                _SETTLED_BODIES_ARE_JS, arg=expected, timeout=timeout
            )
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"#messages never held {expected!r}; it holds {self.messages()!r}"
            ) from None
        seqs = self.seqs()
        assert seqs == sorted(set(seqs)), f"seqs not ascending and unique: {seqs}"

    # --- edits and deletions ---------------------------------------------------

    def row(self, seq: int) -> Locator:
        return self.page.locator(f"#messages > li[data-seq='{seq}']")

    def tool(self, seq: int, name: str | re.Pattern[str]) -> Locator:
        """Row ``seq``'s button called ``name`` ("Edit your message", ...)."""
        return self.row(seq).get_by_role("button", name=name)

    def view(self) -> list[list[object]]:
        """``[seq, text, state]`` per row, top to bottom."""
        return self.page.evaluate(_VIEW_JS)

    def expect_view(
        self, expected: list[list[object]], timeout: float = RECONNECT_TIMEOUT_MS
    ) -> None:
        """Wait until the rows are exactly ``expected`` with no change pending."""
        try:
            self.page.wait_for_function(_VIEW_IS_JS, arg=expected, timeout=timeout)
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"#messages never showed {expected!r}; it shows {self.view()!r}"
            ) from None

    def edit(self, seq: int, text: str) -> None:
        """Click the row's Edit, replace its text, press Enter."""
        self.tool(seq, "Edit your message").click()
        editor = self.row(seq).get_by_role("textbox", name="Edit message")
        expect(editor).to_be_focused()
        editor.fill(text)
        editor.press("Enter")
        expect(editor).to_have_count(0)

    def delete(self, seq: int, *, accept: bool = True) -> str:
        """Click the row's Delete and answer its confirm; return its question."""
        questions: list[str] = []

        def answer(dialog: Dialog) -> None:
            questions.append(dialog.message)
            if accept:
                dialog.accept()
            else:
                dialog.dismiss()

        self.page.once("dialog", answer)
        self.tool(seq, re.compile(r"^Delete ")).click()
        assert len(questions) == 1, "Delete asked no confirm"
        return questions[0]
