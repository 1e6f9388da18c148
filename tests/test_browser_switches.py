"""The browser tests' Chromium switches keep what Playwright itself turns off.

tests/support/browser.py passes a --disable-features of its own, which replaces
Playwright's (Chromium reads the last one), so it repeats Playwright's list. This reads
that list from the installed Playwright's driver: an upgrade that changes it fails here,
not as a browser test that behaves differently.
"""

from __future__ import annotations

import re
from pathlib import Path

import playwright

from tests.support.browser import CHROMIUM_ARGS, NOT_NEEDED_FEATURES, PLAYWRIGHT_DISABLED_FEATURES


def playwright_disabled_features() -> list[str]:
    bundles = sorted((Path(playwright.__file__).parent / "driver" / "package" / "lib").rglob("*.js"))
    for bundle in bundles:
        text = bundle.read_text(encoding="utf-8", errors="replace")
        start = text.find("disabledFeatures = ")
        if start != -1 and '"--disable-features=" + disabledFeatures' in text:
            block = re.sub(r"//[^\n]*", "", text[start:text.index("].filter(Boolean)", start)])
            return re.findall(r'"([^"]+)"', block)
    raise AssertionError("Playwright's list of disabled Chromium features was not found in its driver")


def test_our_disable_features_switch_keeps_every_feature_playwright_turns_off():
    theirs = playwright_disabled_features()
    assert "MediaRouter" in theirs  # the parse found the list, not an empty match
    assert set(theirs) <= set(PLAYWRIGHT_DISABLED_FEATURES), sorted(set(theirs) - set(PLAYWRIGHT_DISABLED_FEATURES))
    (switch,) = [arg for arg in CHROMIUM_ARGS if arg.startswith("--disable-features=")]
    assert switch.split("=", 1)[1].split(",") == PLAYWRIGHT_DISABLED_FEATURES + NOT_NEEDED_FEATURES
