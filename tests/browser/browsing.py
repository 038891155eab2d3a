"""Pages for one test: per user and server URL, console errors watched.

Every page's console errors and uncaught exceptions fail the test unless the
test allows them (a server restart makes Chromium log refused connections,
which is expected there). On failure each open page is saved as a PNG under
``tests/artifacts/``.
"""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

from tests.browser.deployment import PASSWORD
from tests.browser.room_page import RoomPage

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
DEFAULT_TIMEOUT_MS = 10_000
# What Chromium logs while a server is down: a refused WebSocket handshake
# and the page's HTTP check on whether the room is still readable.
NETWORK_ERRORS = (
    re.compile(r"WebSocket connection to .* failed"),
    re.compile(r"Failed to load resource: net::ERR_CONNECTION_REFUSED"),
)


class Browsing:
    """Opens pages for a test, watches their consoles, closes them after."""

    def __init__(
        self, browser: Browser, states: dict[tuple[str, str], Any], name: str
    ) -> None:
        self.browser = browser
        self.states = states
        self.name = name
        self.contexts: list[BrowserContext] = []
        self.pages: list[Page] = []
        self.console_errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow_console_errors(self, *patterns: re.Pattern[str]) -> None:
        """Errors matching ``patterns`` are expected in this test."""
        self.allowed.extend(patterns)

    def unexpected_console_errors(self) -> list[str]:
        return [
            text
            for text in self.console_errors
            if not any(pattern.search(text) for pattern in self.allowed)
        ]

    def new_page(
        self, *, storage_state: Any = None, viewport: dict[str, int] | None = None
    ) -> Page:
        context = self.browser.new_context(
            viewport=viewport or DESKTOP, storage_state=storage_state
        )
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._on_console)
        page.on(
            "pageerror", lambda exc: self.console_errors.append(f"pageerror: {exc}")
        )
        self.pages.append(page)
        return page

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"console: {message.text}")

    def log_in(self, page: Page, base_url: str, user: str) -> None:
        """Log in through Django's login form."""
        page.goto(f"{base_url}/accounts/login/")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", PASSWORD)
        page.locator("form.form button[type=submit]").click()
        page.wait_for_url(f"{base_url}/")

    def signed_in_state(self, base_url: str, user: str) -> Any:
        key = (base_url, user)
        if key not in self.states:
            page = self.new_page()
            self.log_in(page, base_url, user)
            self.states[key] = page.context.storage_state()
        return self.states[key]

    def open_room(
        self,
        base_url: str,
        slug: str,
        *,
        user: str | None = None,
        viewport: dict[str, int] | None = None,
        prepare: Callable[[Page], object] | None = None,
    ) -> RoomPage:
        """Open ``/rooms/<slug>/`` on ``base_url`` as ``user`` (None: a guest).

        ``prepare`` gets the page before it loads (to route its socket).
        """
        state = self.signed_in_state(base_url, user) if user else None
        page = self.new_page(storage_state=state, viewport=viewport)
        if prepare is not None:
            prepare(page)
        page.goto(f"{base_url}/rooms/{slug}/")
        return RoomPage(page)

    def close(self, failed: bool) -> None:
        if failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for index, page in enumerate(self.pages):
                if not page.is_closed():
                    page.screenshot(path=ARTIFACTS / f"{self.name}-{index}.png")
        for context in self.contexts:
            context.close()
