"""The grants page and the approved page's grant scope in Chromium, desktop and phone.

A real review UI server (werkzeug, 127.0.0.1) over an in-memory hold book; Chromium
signs in, reads two grants for the same URL told apart by body summary and hash, finds
no sideways scroll at 390 px and no serious axe-core violation in light or dark, and
revokes from the approved page (back there) and from the grants page (back there).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from werkzeug.serving import make_server

from addons.holds.binding import RequestPrint
from review_ui import close_app, create_app
from review_ui.reviewers import ReviewerStore, add_reviewer
from tests.support import axe
from tests.support.browser import SignIns
from tests.support.hold_desk import PRINT, VERDICT, hold_record, running_desk
from tests.support.review import PASSWORD_SUFFIX

pytestmark = pytest.mark.browser
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
_n = itertools.count(1)
URL = "https://api.example/v1/reports/daily?region=eu-west-1&format=csv&include=customers,refunds,disputes"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    reviewers = tmp_path_factory.mktemp("grants-browser") / "reviewers.yaml"
    add_reviewer(reviewers, "bob", ["finance-leads"], "bob" + PASSWORD_SUFFIX)
    with running_desk() as desk:
        app = create_app(desk, ReviewerStore(reviewers))
        http = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        try:
            yield {"desk": desk, "url": f"http://127.0.0.1:{http.server_port}"}
        finally:
            http.shutdown()
            close_app(app)


def granted(desk, n: int, day: int, uses: int = 0) -> tuple[str, str]:
    """An approved GET hold with a grant (used ``uses`` times): (flow id, grant id)."""
    binding = RequestPrint("GET", URL, f"{n:064x}", PRINT.headers)
    flow_id = f"gb-{n}"
    body = f'{{"day": {day}, "format": "csv", "note": "{"long words " * 12}"}}'.encode()
    desk.bridge.call(desk.book.hold, hold_record(flow_id, time.time(), binding=binding, body=body,
                                                 grant=3600.0, grant_unsafe_methods=False))
    from addons.holds.book import Actor
    desk.approve(flow_id, Actor("alice", frozenset({"finance-leads"})), "nightly export", 1800.0 + n)
    for u in range(uses):
        desk.bridge.call(desk.book.use_grant, f"{flow_id}-use-{u}", "billing-agent", binding, VERDICT)
    return flow_id, desk.find(flow_id)["grant_id"]


@pytest.fixture(scope="module")
def sign_ins(browser) -> SignIns:
    return SignIns(browser)


def form_login(page: Page, server: dict) -> None:
    page.goto(server["url"] + "/login")
    page.fill("input[name=name]", "bob")
    page.fill("input[name=password]", "bob" + PASSWORD_SUFFIX)
    page.click("button[type=submit]")
    page.wait_for_url(server["url"] + "/")


def sign_in(sign_ins: SignIns, server: dict, viewport: dict, scheme: str = "light") -> tuple[object, Page]:
    """A fresh context signed in as bob (one form login for the module), on the queue."""
    page = sign_ins.page("bob", lambda page: form_login(page, server), server["url"] + "/", viewport=viewport,
                         color_scheme=scheme)
    return page.context, page


def width(page) -> int:
    return page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")


#: Each page is loaded once and looked at on both screens: the viewport and the colour
#: scheme are switched in place (the same emulation as a new context's; the pages lay out
#: with CSS media queries only, no script reads the size or the scheme).
SCREENS = [("desktop-light", DESKTOP, "light"), ("phone-dark", PHONE, "dark")]


def on_every_screen(page: Page, check: Callable[[str, dict], None]) -> None:
    for screen, viewport, scheme in SCREENS:
        page.set_viewport_size(viewport)
        page.emulate_media(color_scheme=scheme)
        # The page is on this screen now, as the CSS sees it (else the checks were not made).
        assert page.evaluate("[innerWidth, matchMedia('(prefers-color-scheme: dark)').matches]") == \
            [viewport["width"], scheme == "dark"], screen
        check(screen, viewport)


def test_two_grants_for_one_url_are_told_apart_on_any_screen(sign_ins, server, tmp_path: Path):
    first, first_grant = granted(server["desk"], next(_n), day=1, uses=2)
    second, second_grant = granted(server["desk"], next(_n), day=2)
    context, page = sign_in(sign_ins, server, DESKTOP)
    try:
        page.goto(server["url"] + "/grants")

        def grants_page(screen: str, viewport: dict) -> None:
            one, two = page.locator(f"#grant-{first_grant}"), page.locator(f"#grant-{second_grant}")
            assert one.locator(".g-summary").inner_text().startswith("day=1, format="), screen
            assert two.locator(".g-summary").inner_text().startswith("day=2, format="), screen
            assert one.locator(".g-sha").inner_text() != two.locator(".g-sha").inner_text(), screen
            assert one.locator(".g-uses").inner_text() == "2" and one.locator(".grant-uses li").count() == 2, screen
            assert one.locator(".g-request").inner_text().startswith("GET https://api.example/v1/reports/daily")
            assert width(page) <= viewport["width"], f"/grants scrolls sideways on {screen}: {width(page)} px"
            assert axe.serious(page) == [], (screen, axe.serious(page))

        on_every_screen(page, grants_page)
        page.goto(server["url"] + "/decisions")

        def decisions_page(screen: str, viewport: dict) -> None:
            scope = page.locator(f'tr[data-grant-id="{second_grant}"] .g-scope-link').inner_text()
            assert scope.startswith("day=2"), screen
            assert width(page) <= viewport["width"], f"/decisions scrolls sideways on {screen}: {width(page)} px"
            assert axe.serious(page) == [], (screen, axe.serious(page))

        on_every_screen(page, decisions_page)
        page.goto(server["url"] + f"/flows/{first}")

        def approved_page(screen: str, viewport: dict) -> None:
            assert page.locator(f"#grant-{first_grant} .g-identity").inner_text() == "billing-agent", screen
            assert width(page) <= viewport["width"], \
                f"the approved page scrolls sideways on {screen}: {width(page)} px"
            assert axe.serious(page) == [], (screen, axe.serious(page))
            page.screenshot(path=str(tmp_path / f"approved-with-grant-{screen}.png"), full_page=True)

        on_every_screen(page, approved_page)
    finally:
        context.close()


def test_revoke_from_the_approved_page_and_from_the_grants_page(sign_ins, server):
    first, first_grant = granted(server["desk"], next(_n), day=1)
    _, second_grant = granted(server["desk"], next(_n), day=2)
    context, page = sign_in(sign_ins, server, PHONE)
    try:
        page.goto(server["url"] + f"/flows/{first}")
        page.locator(f"#grant-{first_grant} button", has_text="Revoke").click()
        page.wait_for_url(server["url"] + f"/flows/{first}")
        assert "revoked after 0 uses" in page.locator(".flash").first.inner_text()
        assert page.locator("#grant-gone").count() == 1
        page.goto(server["url"] + "/grants")
        assert page.locator(f"#grant-{first_grant}").count() == 0
        page.locator(f"#grant-{second_grant} button", has_text="Revoke").click()
        page.wait_for_url(server["url"] + "/grants")
        assert page.locator(f"#grant-{second_grant}").count() == 0
        assert [g["id"] for g in server["desk"].grants() if g["id"] in (first_grant, second_grant)] == []
    finally:
        context.close()


def test_the_grants_page_updates_in_place_and_keeps_keyboard_focus(sign_ins, server):
    """A grant made, used or revoked elsewhere shows on an open /grants page without a
    reload, and the reviewer's keyboard focus stays on the control it was on."""
    desk = server["desk"]
    first, first_grant = granted(desk, next(_n), day=1)
    context, page = sign_in(sign_ins, server, DESKTOP)
    try:
        page.goto(server["url"] + "/grants")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        page.evaluate("window.notReloaded = true")
        revoke = page.locator(f"#grant-{first_grant} button", has_text="Revoke")
        revoke.focus()
        _, second_grant = granted(desk, next(_n), day=2)  # another reviewer grants
        page.wait_for_selector(f"#grant-{second_grant}")
        binding = RequestPrint("GET", URL, f"{int(first.removeprefix('gb-')):064x}", PRINT.headers)
        for u in range(2):  # the agent uses the first grant twice
            desk.bridge.call(desk.book.use_grant, f"{first}-live-{u}", "billing-agent", binding, VERDICT)
        expect(page.locator(f"#grant-{first_grant} .g-uses")).to_have_text("2")
        assert page.locator(f"#grant-uses-{first_grant} li").count() == 2
        assert page.evaluate("window.notReloaded") is True  # in place, not a reload
        focused = page.evaluate("[document.activeElement.closest('[data-grant-id]')?.dataset.grantId,"
                                " document.activeElement.textContent]")
        assert focused == [first_grant, f"Revoke grant {first_grant}"]
        # Focus on a use's link stays on that link when another use arrives above it.
        link = page.locator(f"#grant-uses-{first_grant} a", has_text=f"{first}-live-0")
        link.focus()
        desk.bridge.call(desk.book.use_grant, f"{first}-live-2", "billing-agent", binding, VERDICT)
        expect(page.locator(f"#grant-{first_grant} .g-uses")).to_have_text("3")
        assert page.evaluate("document.activeElement.textContent") == f"{first}-live-0"
        from addons.holds.book import Actor
        bob = Actor("bob", frozenset({"finance-leads"}))
        for grant_id in (first_grant, second_grant):  # revoked elsewhere: gone from the page
            desk.revoke(grant_id, bob)
            page.wait_for_selector(f"#grant-{grant_id}", state="detached")
        if not desk.grants():
            page.wait_for_selector("#no-grants")
        assert page.evaluate("window.notReloaded") is True
    finally:
        context.close()
