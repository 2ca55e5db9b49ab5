"""Browser fixtures: Debian's Chromium driven by Playwright (sync API), and the console of
the reference stack (three real Orthancs and an in-process router serving HTTP).

Playwright never downloads a browser here: ``executable_path`` is Debian's ``chromium``
(``apt-get install -y chromium``; ``make deps`` installs it). Never ``playwright install``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Dialog, Playwright, expect, sync_playwright
from tests.support.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    VIEWPORT,
    Console,
    Watched,
)
from tests.support.fixtures import ReferenceStack

from dde.web.auth import load_token


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or make deps)")
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    """A fresh browser context (no cookies) and its page, watched for dialogs and errors."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    seen = Watched(page)

    def on_dialog(dialog: Dialog) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on("console", lambda message: seen.console_message(message.type, message.text))
    expect.set_options(timeout=TIMEOUT_MS)
    yield seen
    context.close()


@pytest.fixture
def console(reference_stack: ReferenceStack) -> Console:
    router = reference_stack.router
    return Console(reference_stack, router.web_url, load_token(router.home, create=False))
