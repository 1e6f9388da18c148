"""Every review-UI page on any screen: no sideways scrolling at 390 px, zero axe-core
violations of impact serious or critical, light and dark; the SQL page's size; a favicon.

axe runs on every page at 1440x900 and at 390x844, each in light and dark (each page is
loaded once, then shown on the four screens in turn).

One gateway (with recording) and one Chromium for the module. The pages are visited with
real data in them: a pending hold, a decided one, recorded flows, a session, a flow
detail, an SQL result. Screenshots of the queue, a review page and the decisions page
are written to ``build/test-artifacts/review-desk/`` (gitignored; override with
``PORTCULLIS_TEST_ARTIFACTS``) for a human to look at.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page, expect

from gateway.settings import PROJECT_ROOT
from tests.support import axe
from tests.support.browser import SignIns
from tests.support.review import PASSWORD_SUFFIX, ReviewRig
from tests.support.upstream import Canned

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(os.environ.get("PORTCULLIS_TEST_ARTIFACTS") or PROJECT_ROOT / "build" / "test-artifacts") \
    / "review-desk"
#: 5,000 rows as wide as the flows table (each a copy of one recorded flow, numbered).
SQL_5000 = "SELECT r.range AS n, f.* FROM range(5000) r, (SELECT * FROM flows LIMIT 1) f ORDER BY n"
MASK_RULE = """
# (column 0 keeps the rule in the rig's rules list)
  - name: cards
    match: {path: /v1/cards/**}
    mask: [{path: $.card, keep_last: 4}, {path: $.dob, with: null}, {path: $.legacy, with: remove}]
"""
REFUND = {"amount": 250, "currency": "EUR", "customer": "cus_8841", "order": "A-7",
          "note": "double charge on the 3rd, customer called twice, ticket 4711 " * 3}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("review-desk-screens"), confdir, extra_rules=MASK_RULE)
    rig.upstream.routes["/v1/cards/c1"] = Canned(200, {"card": "4242424242424242", "dob": "1970-01-01",
                                                       "name": "Ada", "legacy": "drop me"})
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def seeded(rig: ReviewRig) -> dict[str, str]:
    """A recorded session with an allowed, a rejected and a pending request."""
    session = {"X-Portcullis-Session": "ticket-4711-" + "x" * 40}
    allowed = rig.call("GET", "/v1/orders/A-7?expand=customer&t=screens&note=caf%C3%A9%20cr%C3%A8me",
                       headers=session)
    rejected_call = rig.agent("POST", "/v1/refunds?t=screens-rejected", json=REFUND,
                              headers={**session, "X-Portcullis-Justification": "Customer was charged twice"})
    rejected = rig.wait_held("/v1/refunds?t=screens-rejected")
    assert rig.reject("bob", rejected["flow_id"], "Not without a ticket").status_code == 200
    assert rejected_call.result(timeout=10).status_code == 403
    pending_call = rig.agent("POST", "/v1/refunds?t=screens-pending&customer=cus_8841", json=REFUND,
                             headers={**session, "X-Portcullis-Justification": "Customer was charged twice "
                                      "and asked for the money back by phone"})
    pending = rig.wait_held("/v1/refunds?t=screens-pending&customer=cus_8841")
    granted_call = rig.agent("POST", "/v1/refunds?t=screens-granted", json=REFUND)
    granted = rig.wait_held("/v1/refunds?t=screens-granted")
    assert rig.approve("bob", granted["flow_id"], "Known customer", grant="5m").status_code == 200
    assert granted_call.result(timeout=10).status_code == 200
    allowed_id = allowed.headers["X-Portcullis-Flow-Id"]
    rig.wait_for(lambda: {allowed_id, rejected["flow_id"]} <= {f["id"] for f in rig.api(
        "alice", "GET", "/api/audit/session", params={"id": session["X-Portcullis-Session"]}).json().get("flows", [])},
        what="the flows to be recorded")
    yield {"pending": pending["flow_id"], "rejected": rejected["flow_id"], "allowed": allowed_id,
           "granted": granted["flow_id"],
           "session": session["X-Portcullis-Session"]}
    rig.reject("bob", pending["flow_id"], "test over")
    pending_call.result(timeout=10)


def pages(seeded: dict[str, str]) -> dict[str, str]:
    return {
        "queue": "/",
        "review": f"/flows/{seeded['pending']}",
        "review-decided": f"/flows/{seeded['rejected']}",
        "review-granted": f"/flows/{seeded['granted']}",
        "decisions": "/decisions",
        "grants": "/grants",
        "flows": "/audit/flows",
        "sessions": "/audit/sessions",
        "session": f"/audit/session?id={seeded['session']}",
        "flow": f"/audit/flows/{seeded['allowed']}",
        "sql": "/audit/sql?q=SELECT+*+FROM+flows",
        "not-found": "/flows/no-such-flow",
    }


def sign_in(page: Page, rig: ReviewRig) -> None:
    page.goto(rig.ui_url + "/login")
    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", "alice" + PASSWORD_SUFFIX)
    page.click("button[type=submit]")


@pytest.fixture(scope="module")
def sign_ins(browser) -> SignIns:
    return SignIns(browser)


def signed_in(sign_ins: SignIns, rig: ReviewRig, viewport: dict[str, int], scheme: str) -> tuple[object, Page]:
    """A fresh context signed in as alice (one form login for the module), on the queue."""
    page = sign_ins.page("alice", lambda page: sign_in(page, rig), rig.ui_url + "/", viewport=viewport,
                         color_scheme=scheme)
    expect(page.locator("h1").first).to_have_text("Pending requests")
    return page.context, page


def page_width(page: Page) -> int:
    return page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")


#: Each page is loaded once and looked at on every screen: the viewport and the colour
#: scheme are switched in place (the same device-metrics and media emulation as a new
#: context's; the pages lay out with CSS media queries only, no script reads the size or
#: the scheme, and nothing is animated by a transition), then measured and run through axe.
SCREENS = [("desktop-light", DESKTOP, "light"), ("desktop-dark", DESKTOP, "dark"),
           ("phone-light", PHONE, "light"), ("phone-dark", PHONE, "dark")]
SCREENSHOTS = ("queue", "review", "decisions")


def look_on_every_screen(page: Page, name: str, found: dict, widths: dict) -> None:
    for screen, viewport, scheme in SCREENS:
        page.set_viewport_size(viewport)
        page.emulate_media(color_scheme=scheme)
        # The page is on this screen now, as the CSS sees it (else the checks were not made).
        assert page.evaluate("[innerWidth, matchMedia('(prefers-color-scheme: dark)').matches]") == \
            [viewport["width"], scheme == "dark"], (name, screen)
        widths[screen][name] = page_width(page)
        if bad := axe.serious(page):
            found[screen][name] = bad
        if name in SCREENSHOTS:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            kind = "phone" if viewport is PHONE else "desktop"
            page.screenshot(path=str(ARTIFACTS / f"{name}-{kind}-{scheme}.png"), full_page=True)


def test_every_page_has_no_serious_axe_violations_and_fits_the_screen(browser, sign_ins, rig, seeded):
    found: dict[str, dict] = {screen: {} for screen, _, _ in SCREENS}
    widths: dict[str, dict] = {screen: {} for screen, _, _ in SCREENS}
    context, page = signed_in(sign_ins, rig, DESKTOP, "light")
    try:
        for name, path in pages(seeded).items():
            page.goto(rig.ui_url + path)
            page.wait_for_load_state("load")
            look_on_every_screen(page, name, found, widths)
        context.close()
        context = browser.new_context(viewport=DESKTOP, color_scheme="light")  # signed out
        page = context.new_page()
        page.goto(rig.ui_url + "/login")
        look_on_every_screen(page, "login", found, widths)
    finally:
        context.close()
    for screen, viewport, _ in SCREENS:
        print(f"\n{screen} ({viewport['width']} px): widths {widths[screen]}")
    print(f"axe serious/critical: { {s: {k: [v['id'] for v in vs] for k, vs in f.items()} for s, f in found.items()} }")
    assert {screen: bad for screen, bad in found.items() if bad} == {}
    too_wide = {screen: {k: w for k, w in widths[screen].items() if w > viewport["width"]}
                for screen, viewport, _ in SCREENS}
    assert {screen: wide for screen, wide in too_wide.items() if wide} == {}
    assert all(len(w) == len(pages(seeded)) + 1 for w in widths.values())  # every page, every screen


def test_the_sql_page_shows_a_page_of_rows_not_a_thousand(sign_ins, rig, seeded):
    context, page = signed_in(sign_ins, rig, DESKTOP, "light")
    try:
        start = time.monotonic()
        response = page.goto(rig.ui_url + "/audit/sql?" + urlencode({"q": SQL_5000}))
        page.wait_for_load_state("load")
        took = time.monotonic() - start
        nodes = page.evaluate("document.getElementsByTagName('*').length")
        size = len(response.body())
        print(f"\nSQL page, 5000-row query: {nodes} DOM nodes, {size} bytes, {took * 1000:.0f} ms")
        assert nodes < 5000 and size < 250_000  # 1,000 rows were 39k nodes and 2.2 MB
        expect(page.locator("#sql-results tbody tr")).to_have_count(100)
        page.click("#sql-next")
        expect(page.locator("#sql-results tbody tr").first).to_contain_text("100")
        expect(page.locator("#sql-count")).to_contain_text("101")
    finally:
        context.close()


def test_values_masked_with_keep_last_or_null_are_marked_and_removed_ones_named(sign_ins, rig, seeded):
    card = rig.call("GET", "/v1/cards/c1")
    assert card.json()["card"] == "************4242" and card.json()["dob"] is None
    flow_id = card.headers["X-Portcullis-Flow-Id"]
    rig.wait_for(lambda: rig.api("alice", "GET", "/api/audit/flows", params={"path": "/v1/cards"}).json()
                 .get("flows"), what="the masked flow to be recorded")
    context, page = signed_in(sign_ins, rig, DESKTOP, "light")
    try:
        page.goto(f"{rig.ui_url}/audit/flows/{flow_id}")
        expect(page.locator("#response-body .masked")).to_have_text(['"************4242"', "null"])
        expect(page.locator("#response-body .j-str").filter(has_text="Ada")).not_to_have_class("masked")
        expect(page.locator(".masked-note")).to_contain_text("$.legacy")
    finally:
        context.close()


def test_a_query_secret_is_redacted_in_the_recording_the_queue_and_the_pages(sign_ins, rig, seeded):
    secret = "sk_live_" + "Q" * 24
    allowed = rig.call("GET", f"/v1/orders/A-9?api_key={secret}&t=screens-secret")
    assert allowed.status_code == 200 and secret in allowed.json()["path"]  # the upstream got it as sent
    call = rig.agent("POST", f"/v1/refunds?api_key={secret}&t=screens-secret", json=REFUND)
    hold = rig.wait_held("/v1/refunds?api_key=[redacted]&t=screens-secret")  # the API shows it redacted
    flows = rig.wait_for(lambda: rig.api("alice", "GET", "/api/audit/flows", params={"path": "/v1/orders/A-9"})
                         .json().get("flows"), what="the flow to be recorded")
    assert flows[0]["query"] == "api_key=[redacted]&t=screens-secret"
    context, page = signed_in(sign_ins, rig, DESKTOP, "light")
    try:
        for path in ("/", f"/flows/{hold['flow_id']}", f"/audit/flows/{flows[0]['id']}", "/audit/flows"):
            page.goto(rig.ui_url + path)
            assert secret not in page.content(), path
        rig.reject("bob", hold["flow_id"], "test over")
        call.result(timeout=10)
        rig.wait_for(lambda: rig.api("alice", "GET", "/api/audit/flows", params={"path": "/v1/refunds"})
                     .json().get("flows"), what="the rejected hold to be recorded")
        page.goto(rig.ui_url + "/audit/sql?" + urlencode({"q": "SELECT detail FROM events WHERE kind = 'held'"}))
        expect(page.locator("#sql-results")).to_contain_text("screens-secret")
        assert secret not in page.content()  # the held event's URL, in the recording
    finally:
        context.close()


def test_there_is_a_favicon(rig):
    response = rig.http.get(rig.ui_url + "/favicon.ico", timeout=5, allow_redirects=True)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("image/")
