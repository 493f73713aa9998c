"""Drive Label Studio's real web UI from a test: Debian `chromium` through Playwright.

No browser download: Playwright launches the system binary (`apt-get install chromium`), with
the flags from ../shared/LABEL_STUDIO_NOTES.md. `logged_in_page` yields a page logged in as the
test user; if the block raises (a failed assertion or a selector that timed out), a full-page
screenshot is written to the test's tmp dir and its path printed. `shot` saves a named step.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import LS_PASSWORD, LS_USER, require

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Label Studio's pages are heavy for a shared 2-core machine: generous, but bounded.
DEFAULT_TIMEOUT_MS = 60_000


def require_chromium():
    """The playwright.sync_api module; skip (locally) or fail (CI=true) without chromium/playwright."""
    require(shutil.which("chromium") is not None, "Debian chromium is not installed (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


def login(page, label_studio: str) -> None:
    page.goto(f"{label_studio}/user/login/")
    page.fill('input[name="email"]', LS_USER)
    page.fill('input[name="password"]', LS_PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(lambda url: "/user/login" not in url, timeout=DEFAULT_TIMEOUT_MS)
    page.wait_for_load_state("networkidle")


def shot(page, shots_dir: Path, name: str) -> Path:
    """A full-page screenshot of a step, `<shots_dir>/<name>.png` (never fails the test)."""
    path = Path(shots_dir) / f"{name}.png"
    try:
        page.screenshot(path=str(path), full_page=True)
    except Exception as exc:  # noqa: BLE001 - a screenshot is a diagnostic, not the test
        print(f"screenshot {path} failed: {exc}")
    return path


@contextlib.contextmanager
def logged_in_page(label_studio: str, shots_dir: Path, *, width: int = 1400, height: int = 900) -> Iterator:
    """A Chromium page logged in to `label_studio`; a screenshot is saved if the block fails."""
    sync_api = require_chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(DEFAULT_TIMEOUT_MS)
            try:
                login(page, label_studio)
                yield page
            except BaseException:
                path = shot(page, shots_dir, "failure")
                print(f"\nscreenshot of the page at the failure: {path} (url {page.url})")
                raise
        finally:
            browser.close()
