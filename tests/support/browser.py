"""A real Chromium (Debian's /usr/bin/chromium) driven by Playwright, for UI tests.

``browser`` is one headless Chromium per test module; each test takes a fresh
``browser.new_context()`` (its own cookies), which costs milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.ci import missing

CHROMIUM = os.environ.get("PORTCULLIS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        missing(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
