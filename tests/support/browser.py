"""What the browser tests share: how Debian's Chromium is launched, a watched page (dialogs
and script errors recorded), and the console of a running router (log in)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.support.fixtures import ReferenceStack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1360, "height": 900}
TIMEOUT_MS = 15_000


@dataclass
class Watched:
    """A page and what it did that a test must not miss: dialogs (an injected
    ``alert()``), uncaught script errors, and console errors such as a refusal by the
    Content-Security-Policy (the browser's notes on 4xx answers, which tests provoke, are
    not errors of the page)."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a dialog opened: {self.dialogs}"
        assert self.errors == [], f"script errors: {self.errors}"

    def console_message(self, kind: str, text: str) -> None:
        if kind == "error" and not text.startswith("Failed to load resource"):
            self.errors.append(f"console: {text}")


@dataclass
class Console:
    """The router's web console and the stack behind it."""

    stack: ReferenceStack
    url: str
    token: str

    def log_in(self, page: Page, path: str = "/") -> None:
        """Open ``path``, be sent to the login page, log in, land on ``path``."""
        page.goto(self.url + path)
        expect(page).to_have_url(re.compile(re.escape(self.url + "/login")))
        ready(page)
        page.fill("#token", self.token)
        page.click("#login-form button[type=submit]")
        expect(page).to_have_url(self.url + path)
        ready(page)


def ready(page: Page) -> None:
    """Wait until the page's scripts ran (they mark ``<body data-ready="yes">``): a click or
    a file given before would reach no handler."""
    expect(page.locator("body")).to_have_attribute("data-ready", "yes")
