"""A real Chromium (Debian's /usr/bin/chromium) driven by Playwright, for UI tests.

``browser`` is one headless Chromium per test process (an xdist worker), launched by
the first test module that asks for it (a launch costs about a second and 0.8 s of
CPU); each test takes a fresh ``browser.new_context()`` (its own cookies), which costs
milliseconds. ``SignIns`` lets a module's tests share one form login per reviewer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.ci import missing

CHROMIUM = os.environ.get("PORTCULLIS_CHROMIUM", "/usr/bin/chromium")
#: The features Playwright (1.65, chromiumSwitches.ts) turns off; a --disable-features of
#: our own replaces its switch (Chromium reads the last one), so it carries these too
#: (tests/test_browser_switches.py compares them with the installed Playwright's).
PLAYWRIGHT_DISABLED_FEATURES = [
    "AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose", "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter", "PaintHolding",
    "ThirdPartyStoragePartitioning", "AvoidCorsURLLoaderRestartOnRedirect", "TcpPortRandomizationWin",
    "OptimizationHints", "NetworkTimeServiceQuerying", "AimEnabled", "PreconnectToSearch",
    "msForceBrowserSignIn", "msEdgeUpdateLaunchServicesPreferredVersion",
]
#: Headless Chromium 156 is the whole browser: every window (a Playwright context's
#: first page) preloads the omnibox's two WebUI popups (chrome://omnibox-popup.top-chrome/)
#: into a renderer of their own, about 0.5 s of CPU per context that no page of ours
#: ever shows. Without them a context has the renderer of its page (and the spare one).
NOT_NEEDED_FEATURES = ["WebUIOmniboxPopup", "WebUIOmniboxAimPopup"]
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-features=" + ",".join(PLAYWRIGHT_DISABLED_FEATURES + NOT_NEEDED_FEATURES),
]


class _Chromium:
    """The process's Playwright driver and Chromium, started on first use.

    Playwright's sync API marks its event loop as running in the main thread between
    calls (playwright/_impl/_greenlets.py, wait_for_future), so while it is alive
    ``asyncio.run()`` refuses to start there. The tests of other modules that run in
    this process afterwards use asyncio.run: between browser modules the mark is taken
    off (``pause``) and put back before the next Playwright call (``resume``).
    """

    def __init__(self) -> None:
        self._manager: Any = None
        self._playwright: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.browser: Any = None

    def resume(self) -> Any:
        if self._manager is None:
            if not os.path.exists(CHROMIUM):
                missing(f"no Chromium at {CHROMIUM}")
            from playwright.sync_api import sync_playwright

            self._manager = sync_playwright()
            self._playwright = self._manager.start()
            self._loop = asyncio.events._get_running_loop()
            self.browser = self._launch()
            return self.browser
        if asyncio.events._get_running_loop() is None and not self._playwright._dispatcher_fiber.dead:
            asyncio.events._set_running_loop(self._loop)
        if not self.browser.is_connected():  # crashed in an earlier module: a new one
            self.browser = self._launch()
        return self.browser

    def _launch(self) -> Any:
        return self._playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

    def pause(self) -> None:
        if self._loop is not None and asyncio.events._get_running_loop() is self._loop:
            asyncio.events._set_running_loop(None)

    def stop(self) -> None:
        if self._manager is None:
            return
        self.resume()
        try:
            self.browser.close()
        finally:
            self._manager.__exit__()


@pytest.fixture(scope="session")
def _chromium() -> Iterator[_Chromium]:
    shared = _Chromium()
    yield shared
    shared.stop()


@pytest.fixture(scope="module")
def browser(_chromium: _Chromium) -> Iterator[Any]:
    """The process's Chromium, for this module's tests (take a fresh context per test).

    Contexts the module left open are closed after it, as closing its own browser did:
    their pages (live feeds of gateways that are gone) would keep running."""
    chromium = _chromium.resume()
    yield chromium
    try:
        if chromium.is_connected():
            for context in chromium.contexts:
                context.close()
    finally:
        _chromium.pause()


class SignIns:
    """One form login per reviewer for a module's tests; later contexts start signed in.

    ``page(name, sign_in, start)`` is the first page of a fresh browser context. The
    first one for ``name`` logs in with ``sign_in(page)`` (the login form, with its own
    checks), and its storage state (the session cookie) is kept; the next ones start
    from that state and go straight to ``start``. A test that ends a session (signs
    out, restarts the gateway) asks for ``fresh=True`` or calls ``forget``.
    """

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.states: dict[str, dict[str, Any]] = {}

    def page(self, name: str, sign_in: Callable[[Any], Any], start: str, fresh: bool = False,
             **options: Any) -> Any:
        state = None if fresh else self.states.get(name)
        context = self.browser.new_context(storage_state=state, **options)
        page = context.new_page()
        page.set_default_timeout(10_000)
        if state is None:
            sign_in(page)
            if not fresh:
                self.states[name] = context.storage_state()
        else:
            page.goto(start)
        return page

    def forget(self, name: str | None = None) -> None:
        if name is None:
            self.states.clear()
        else:
            self.states.pop(name, None)
