"""The review desk in a real Chromium (issue 16): deliberate decisions, honest live state,
a phone, the latency targets.

One gateway for the module; each test takes a fresh context, signed in with the session
of the reviewer's first (form) login in the module.
The last test stops and restarts the gateway (the page must say so, not keep claiming
to be live), so it runs last.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import SignIns
from tests.support.review import PASSWORD_SUFFIX, ReviewRig
from tests.support.upstream import Canned

pytestmark = pytest.mark.browser

REFUND = {"amount": 250, "currency": "EUR", "customer": "cus_8841"}
PHONE = {"width": 390, "height": 844}
LATENCY_RULE = """
# (column 0 keeps the rule in the rig's rules list)
  - name: latency-probe
    match: {path: /v1/latency}
    action: hold
    reason: "Latency probe"
"""
#: Records, per queue row, when it appeared (Date.now(), the same clock as time.time()).
ROW_WATCH = """() => {
  window.__rowsSeen = {};
  new MutationObserver(() => {
    document.querySelectorAll('#queue-rows tr.hold').forEach((row) => {
      if (!(row.dataset.flowId in window.__rowsSeen)) window.__rowsSeen[row.dataset.flowId] = Date.now();
    });
  }).observe(document.getElementById('queue-rows'), {childList: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("review-desk-browser"), confdir, extra_rules=LATENCY_RULE)
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def sign_ins(browser) -> SignIns:
    return SignIns(browser)


@pytest.fixture
def login(sign_ins: SignIns, rig: ReviewRig) -> Iterator:
    """login(name, viewport=None, context=None, fresh=False): a page on the queue signed in
    as ``name``: in a fresh context (with the session of the reviewer's first form login
    in the module, or with ``fresh`` a login of its own), or a new page in ``context``."""
    contexts = []

    def form(page: Page, name: str) -> None:
        page.goto(rig.ui_url + "/")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", name + PASSWORD_SUFFIX)
        page.click("button[type=submit]")

    def sign_in(name: str, viewport: dict[str, int] | None = None, context=None, fresh: bool = False) -> Page:
        if context is None:
            page = sign_ins.page(name, lambda page: form(page, name), rig.ui_url + "/", fresh=fresh,
                                 viewport=viewport or {"width": 1440, "height": 900})
            contexts.append(page.context)
        else:
            page = context.new_page()
            page.set_default_timeout(10_000)
            page.goto(rig.ui_url + "/")
        expect(page.locator("h1").first).to_have_text("Pending requests")
        expect(page.locator("#live-status.on")).to_be_attached()
        return page

    yield sign_in
    for context in contexts:
        context.close()


def test_a_stray_key_never_decides_and_a_shortcut_asks_to_confirm(rig, login):
    page = login("alice")
    call = rig.agent("POST", "/v1/refunds?t=desk-stray", json=REFUND)
    hold = rig.wait_held("/v1/refunds?t=desk-stray")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    page.locator("button", has_text="Sign out").focus()
    page.keyboard.press("r")
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text("write a comment")
    expect(page.locator("#comment")).to_be_focused()  # a rejection asks for a comment first
    page.keyboard.press("Escape")
    expect(page.locator("#confirm")).to_be_hidden()
    page.locator("button", has_text="Sign out").focus()
    page.keyboard.press("a")
    expect(page.locator("#confirm-yes")).to_be_focused()
    page.keyboard.press("Escape")
    assert rig.flow(hold["flow_id"])["status"] == "pending"  # nothing was decided by one key
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    expect(page.locator("#flow-status")).to_have_text("approved")
    expect(page.locator("#decided-notice")).to_contain_text("alice")
    assert call.result(timeout=10).status_code == 200


def test_the_reject_button_without_a_comment_asks_for_one(rig, login):
    page = login("bob")
    call = rig.agent("POST", "/v1/refunds?t=desk-reject", json=REFUND)
    hold = rig.wait_held("/v1/refunds?t=desk-reject")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    page.click("#reject")
    expect(page.locator("#comment")).to_be_focused()
    assert rig.flow(hold["flow_id"])["status"] == "pending"
    page.fill("#comment", "Needs a ticket number")
    page.click("#confirm-yes")
    expect(page.locator("#flow-status")).to_have_text("rejected")
    assert call.result(timeout=10).json()["comment"] == "Needs a ticket number"


def test_a_decision_by_someone_else_is_shown_in_place_and_the_typed_comment_is_kept(rig, login):
    page = login("alice")
    call = rig.agent("POST", "/v1/refunds?t=desk-elsewhere", json=REFUND)
    hold = rig.wait_held("/v1/refunds?t=desk-elsewhere")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    page.evaluate("window.__notReloaded = true")
    page.fill("#comment", "Half-written thoughts about this refund")
    assert rig.reject("bob", hold["flow_id"], "Duplicate of A-7").status_code == 200
    notice = page.locator("#decided-notice")
    expect(notice).to_contain_text("Rejected")
    expect(notice).to_contain_text("bob")
    expect(notice).to_contain_text("Duplicate of A-7")
    expect(page.locator("#comment")).to_have_value("Half-written thoughts about this refund")
    expect(page.locator("#approve")).to_have_count(0)
    expect(page.locator("#flow-status")).to_have_text("rejected")
    assert page.evaluate("window.__notReloaded") is True
    call.result(timeout=10)


def test_queue_keys_focus_kept_across_live_updates_new_rows_marked_and_help(rig, login):
    page = login("carol")
    calls = [rig.agent("POST", f"/v1/anyone?t=desk-nav-{i}", json={"n": i}) for i in range(2)]
    holds = [rig.wait_held(f"/v1/anyone?t=desk-nav-{i}") for i in range(2)]
    for hold in holds:
        expect(page.locator(f'tr[data-flow-id="{hold["flow_id"]}"]')).to_be_visible()
    page.locator("h1").click()
    page.keyboard.press("j")
    first = page.locator("#queue-rows tr.hold").first
    expect(first).to_have_class(re.compile(r"\bselected\b"))
    expect(first.locator("a.open")).to_be_focused()
    selected_id = first.get_attribute("data-flow-id")
    late = rig.agent("POST", "/v1/anyone?t=desk-nav-late", json={})
    late_hold = rig.wait_held("/v1/anyone?t=desk-nav-late")
    new_row = page.locator(f'tr[data-flow-id="{late_hold["flow_id"]}"]')
    expect(new_row).to_have_class(re.compile(r"\bnew\b"))  # arrived live: highlighted
    # The live update replaced the rows; focus and selection stay on the same hold.
    expect(page.locator(f'tr[data-flow-id="{selected_id}"] a.open')).to_be_focused()
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()
    page.locator("h1").click()
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/flows/"))
    for hold in [*holds, late_hold]:
        rig.reject("bob", hold["flow_id"], "test over")
    for call in [*calls, late]:
        call.result(timeout=10)


def test_the_review_page_works_on_a_phone(rig, login):
    page = login("bob", PHONE)
    call = rig.agent("POST", "/v1/refunds?t=desk-phone", json=REFUND,
                     headers={"X-Portcullis-Justification": "Customer charged twice"})
    hold = rig.wait_held("/v1/refunds?t=desk-phone")
    row = page.locator(f'tr[data-flow-id="{hold["flow_id"]}"]')
    expect(row).to_contain_text("amount 250")  # the queue row says what the request does
    box = row.locator("a.open").bounding_box()
    assert box["width"] > 200  # not a five-character URL column
    row.locator("a.open").click()
    expect(page.locator("#body-summary")).to_contain_text("amount 250 · currency EUR")
    # The summary is in the HTML: it can be there before app.css is (revalidated on every
    # page, no-cache), and a page measured unstyled is 499 px wide. The load event waits for it.
    page.wait_for_load_state("load")
    approve = page.locator("#approve")
    approve_box = approve.bounding_box()
    assert approve_box["x"] >= 0 and approve_box["x"] + approve_box["width"] <= PHONE["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    approve.click()
    expect(page.locator("#flow-status")).to_have_text("approved")
    assert call.result(timeout=10).status_code == 200


def test_a_long_body_is_folded_and_unfolds(rig, login):
    page = login("bob")
    body = {"items": [{"sku": f"A-{i}", "qty": i} for i in range(200)]}
    call = rig.agent("POST", "/v1/refunds?t=desk-fold", json=body)
    hold = rig.wait_held("/v1/refunds?t=desk-fold")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    pre = page.locator("#body")
    folded = pre.bounding_box()["height"]
    assert folded < 500  # about a screen's worth, then the decision
    assert page.locator("#approve").bounding_box()["y"] < 1400
    page.click("#body-unfold")
    expect(page.locator("#body-unfold")).to_have_attribute("aria-expanded", "true")
    assert pre.bounding_box()["height"] > folded
    rig.reject("bob", hold["flow_id"], "test over")
    call.result(timeout=10)


def test_a_new_hold_shows_live_and_a_click_forwards_it_once(rig, login):
    # Function only: timings are printed for the reader, never asserted (project rule 6);
    # bench/approvals.py measures click-to-upstream.
    page = login("alice")
    page.evaluate(ROW_WATCH)
    arrived: list[float] = []
    rig.upstream.routes["/v1/latency"] = lambda seen: (arrived.append(time.time()), Canned(200, {"ok": True}))[1]
    visible, forwarded = [], []
    for i in range(3):  # the first round warms up connections and caches: not printed
        sent = time.time()
        call = rig.agent("POST", f"/v1/latency?t=desk-lat-{i}", json={"n": i},
                         headers={"X-Portcullis-Justification": "latency"})
        hold = rig.wait_held(f"/v1/latency?t=desk-lat-{i}")
        row = page.locator(f'tr[data-flow-id="{hold["flow_id"]}"]')
        expect(row).to_be_visible()
        seen_at = page.evaluate("(id) => window.__rowsSeen[id]", hold["flow_id"])
        assert seen_at is not None, page.evaluate("window.__rowsSeen")
        visible.append(seen_at / 1000 - sent)
        review = page.context.new_page()
        review.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
        review.evaluate("document.getElementById('approve').addEventListener('click', "
                        "() => sessionStorage.setItem('clickedAt', String(Date.now())), {capture: true})")
        before = len(arrived)
        review.click("#approve")
        assert call.result(timeout=10).status_code == 200
        assert len(arrived) == before + 1
        forwarded.append(arrived[-1] - int(review.evaluate("sessionStorage.getItem('clickedAt')")) / 1000)
        review.close()
    visible, forwarded = visible[1:], forwarded[1:]
    print(f"\nnew hold visible: median {statistics.median(visible) * 1000:.0f} ms, max {max(visible) * 1000:.0f} ms;"
          f" click to upstream: median {statistics.median(forwarded) * 1000:.0f} ms")


def test_signing_out_in_another_tab_shows_a_banner_and_stops_claiming_live(rig, login):
    queue = login("dave", fresh=True)  # a session of its own: this test ends it
    waiting = rig.agent("POST", "/v1/anyone?t=desk-signed-out-open", json={})
    open_hold = rig.wait_held("/v1/anyone?t=desk-signed-out-open")
    review = queue.context.new_page()
    review.goto(f"{rig.ui_url}/flows/{open_hold['flow_id']}")
    expect(review.locator("#live-status.on")).to_be_attached()
    other = login("dave", context=queue.context)
    other.locator("button", has_text="Sign out").click()
    expect(other).to_have_url(re.compile(r"/login"))
    for page in (queue, review):
        banner = page.locator("#live-banner")
        expect(banner).to_be_visible(timeout=5000)
        expect(banner).to_contain_text("session has ended")
        expect(page.locator("#live-banner-signin")).to_be_visible()
        expect(page.locator("#live-status")).not_to_have_class(re.compile(r"\bon\b"))
        expect(page.locator("#live-status")).to_contain_text("Signed out")
        assert page.evaluate("window.portcullisLive.readyState") == 2  # the stream is closed
    expect(review.locator("#approve")).to_be_disabled()  # the review page does not pretend either
    call = rig.agent("POST", "/v1/anyone?t=desk-signed-out", json={})
    hold = rig.wait_held("/v1/anyone?t=desk-signed-out")
    expect(queue.locator("#queue-rows input[name=password]")).to_have_count(0)  # no login page in the table
    assert hold["flow_id"] not in queue.content()
    queue.click("#live-banner-signin")
    expect(queue).to_have_url(re.compile(r"/login\?next=/"))
    rig.reject("bob", hold["flow_id"], "test over")
    rig.reject("bob", open_hold["flow_id"], "test over")
    call.result(timeout=10)
    waiting.result(timeout=10)


def test_a_gateway_restart_is_shown_and_then_asks_to_sign_in_again(rig, login, sign_ins):
    page = login("alice")
    sign_ins.forget()  # the new process will not know the sessions of this one
    rig.gateway.stop()
    expect(page.locator("#live-banner")).to_be_visible(timeout=5000)
    expect(page.locator("#live-banner")).to_contain_text("not reachable")
    expect(page.locator("#live-status")).not_to_have_class(re.compile(r"\bon\b"))
    rig.gateway._ready.clear()
    rig.gateway.start()
    # The new process does not know the old session: the page says so and offers a sign-in.
    expect(page.locator("#live-banner")).to_contain_text("session has ended", timeout=10_000)
    expect(page.locator("#live-banner-signin")).to_be_visible()
    # Earlier decisions survive the restart: the review page finds them in the recording.
    call = rig.agent("POST", "/v1/refunds?t=desk-after-restart", json=REFUND)
    hold = rig.wait_held("/v1/refunds?t=desk-after-restart")
    page.click("#live-banner-signin")
    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", "alice" + PASSWORD_SUFFIX)
    page.click("button[type=submit]")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    similar = page.locator("#similar")
    expect(similar).to_contain_text("/v1/refunds?t=desk-stray")  # approved before the restart
    expect(similar).to_contain_text("/v1/refunds?t=desk-reject")
    rig.reject("bob", hold["flow_id"], "test over")
    call.result(timeout=10)
