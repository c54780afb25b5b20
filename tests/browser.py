"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright (no browser
download). tests/integration/test_dashboard.py and the Ray module's scaling test use it.

    with chromium() as browser:            # pytest.skip (saying how to enable) without Chromium
        tab = Tab(browser, server.url)
        tab.sign_in(admin_key)
        tab.open("models")
        screenshot(tab.page, shots, "models")
        tab.close()                          # fails on any CSP violation or page error

Chromium is /usr/bin/chromium (`make browser` installs Debian's package when run as root), or
$STRATUS_CHROMIUM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
TIMEOUT_MS = 20_000


def chromium_path() -> str | None:
    return os.environ.get("STRATUS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium() -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium: install Debian's (`make browser`, or apt-get install -y chromium) "
            "or set STRATUS_CHROMIUM"
        )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def screenshot_dirs(tmp_path_factory) -> list[Path]:
    """$STRATUS_ARTIFACTS/dashboard (else a temporary directory), and docs/images/ with
    STRATUS_UPDATE_SCREENSHOTS=1."""
    base = os.environ.get("STRATUS_ARTIFACTS")
    folder = Path(base) / "dashboard" if base else tmp_path_factory.mktemp("dashboard")
    folder.mkdir(parents=True, exist_ok=True)
    return [folder] + ([IMAGES] if os.environ.get("STRATUS_UPDATE_SCREENSHOTS") == "1" else [])


def screenshot(page, shots: list[Path], name: str, full_page: bool = True) -> None:
    data = page.screenshot(full_page=full_page)
    for folder in shots:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"dashboard-{name}.png").write_bytes(data)


class Tab:
    """One browser tab on the gateway; every CSP violation and page error is kept."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        # A blocked inline script, style or eval fires this event (and a console error): both kept.
        self.page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => "
            "console.error('Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
        )
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(m.text) if m.type == "error" and "Content Security" in m.text else None
            ),
        )
        self.url = url

    def sign_in(self, credential: str) -> None:
        self.page.goto(self.url + "/ui")
        self.page.fill("#token", credential)
        self.page.click("#signin-form button[type=submit]")
        expect(self.page.locator("#who")).not_to_be_empty()

    def open(self, name: str) -> None:
        self.page.evaluate(f"location.hash = '#/{name}'")
        expect(self.page.locator(f"#page-{name}")).to_be_visible()

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems
