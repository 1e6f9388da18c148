"""The review UI in a real Chromium against a running gateway, with real agents waiting.

One gateway for the module; each test takes a fresh browser context, signed in with
the session of the reviewer's first (form) login in the module. Live-feed streams are cut every few seconds here (PORTCULLIS_UI_SSE_LIFETIME)
so that every test also runs across EventSource reconnects.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import SignIns
from tests.support.review import PASSWORD_SUFFIX, ReviewRig

pytestmark = pytest.mark.browser

SSE_LIFETIME_S = 3
REFUND = {"amount": 250, "order": "A-7", "note": "double charge"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("review-ui"), confdir,
                    env={"PORTCULLIS_UI_SSE_LIFETIME": str(SSE_LIFETIME_S)})
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def sign_ins(browser) -> SignIns:
    return SignIns(browser)


@pytest.fixture
def login(sign_ins: SignIns, rig: ReviewRig) -> Iterator:
    """login(name): a fresh browser context on the queue, signed in as ``name`` (through
    the login form the first time in the module, then with that session)."""
    contexts = []

    def form(page: Page, name: str) -> None:
        page.goto(rig.ui_url + "/")
        expect(page).to_have_url(re.compile(r"/login"))
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", name + PASSWORD_SUFFIX)
        page.click("button[type=submit]")

    def sign_in(name: str) -> Page:
        page = sign_ins.page(name, lambda page: form(page, name), rig.ui_url + "/")
        contexts.append(page.context)
        expect(page.locator("h1")).to_have_text("Pending requests")
        expect(page.locator("#live-status.on")).to_be_attached()  # the live feed is connected
        return page

    yield sign_in
    for context in contexts:
        context.close()


def decided_by(rig: ReviewRig, flow_id: str, kind: str) -> dict:
    return next(e for e in rig.flow(flow_id)["events"] if e["kind"] == kind)


def test_hold_appears_live_then_approve_with_comment_completes_the_agent_call(rig, login):
    page = login("alice")
    page.evaluate("window.__notReloaded = true")
    session = {"X-Portcullis-Session": "ticket-4711"}
    earlier = rig.call("GET", "/v1/orders/A-7?t=ui-approve", headers=session)
    assert earlier.status_code == 200
    # The review page reads the session's history from the recording: wait for its group commit.
    earlier_id = earlier.headers["X-Portcullis-Flow-Id"]
    rig.wait_for(lambda: any(f["id"] == earlier_id for f in rig.api(
        "alice", "GET", "/api/audit/session?id=ticket-4711").json().get("flows", [])),
        what="the earlier flow to be recorded")
    call = rig.agent("POST", "/v1/refunds?t=ui-approve", "billing-agent", json=REFUND,
                     headers={"X-Portcullis-Justification": "Customer was charged twice",
                              "Authorization": "Bearer sk-live-should-not-show", **session})
    hold = rig.wait_held("/v1/refunds?t=ui-approve")
    row = page.locator(f'tr[data-flow-id="{hold["flow_id"]}"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("billing-agent")
    expect(row).to_contain_text("Refunds over $100 need a finance lead")
    assert page.evaluate("window.__notReloaded") is True  # it arrived live, not by reload
    expect(page).to_have_title(re.compile(r"^\(\d+\) Pending"))

    row.locator("a.open").click()
    expect(page.locator(".reason-big")).to_have_text("Refunds over $100 need a finance lead")
    expect(page.locator("blockquote.justification")).to_contain_text("Customer was charged twice")
    expect(page.locator("#body .j-key").first).to_have_text('"amount"')  # highlighted JSON
    assert json.loads(page.locator("#body").inner_text()) == REFUND
    expect(page.locator("#query-params")).to_contain_text("ui-approve")
    expect(page.locator("#headers")).to_contain_text("application/json")
    assert "sk-live-should-not-show" not in page.content()
    expect(page.locator("td.redacted").first).to_have_text("[redacted]")
    expect(page.locator("#session-flows")).to_contain_text("/v1/orders/A-7")  # from the recording
    expect(page.locator("#matched-rules")).to_contain_text("money-movement")
    expect(page.locator("#matched-rules")).to_contain_text("Moves customer money")

    page.fill("#comment", "Refund confirmed by phone")
    page.click("#approve")
    expect(page.locator("#flow-status")).to_have_text("approved")
    expect(page.locator("#decided-by")).to_have_text("alice")
    response = call.result(timeout=10)
    assert response.status_code == 200
    assert response.json()["path"] == "/v1/refunds?t=ui-approve"
    event = decided_by(rig, hold["flow_id"], "approved")
    assert event["actor"] == "alice" and event["detail"]["comment"] == "Refund confirmed by phone"


def test_reject_with_the_keyboard(rig, login):
    page = login("bob")
    call = rig.agent("POST", "/v1/refunds?t=ui-reject", json=REFUND)
    hold = rig.wait_held("/v1/refunds?t=ui-reject")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    page.fill("#comment", "Not without a ticket")
    page.locator("h1").click()  # leave the textarea: shortcuts do not fire while typing
    page.keyboard.press("r")  # a shortcut opens the confirm step; it never decides alone
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-yes")).to_be_focused()
    assert rig.flow(hold["flow_id"])["status"] == "pending"
    page.keyboard.press("Enter")
    expect(page.locator("#flow-status")).to_have_text("rejected")
    response = call.result(timeout=10)
    assert response.status_code == 403
    assert response.json()["reviewer"] == "bob" and response.json()["comment"] == "Not without a ticket"
    assert decided_by(rig, hold["flow_id"], "rejected")["actor"] == "bob"


def test_expiry_updates_the_open_review_page(rig, login):
    page = login("alice")
    call = rig.agent("POST", "/v1/quick?t=ui-expire", json={})
    hold = rig.wait_held("/v1/quick?t=ui-expire")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    expect(page.locator("#flow-status")).to_have_text("expired", timeout=8000)
    expect(page.locator("#decide-form")).to_have_count(0)
    assert call.result(timeout=10).json()["error"] == "approval_expired"


def test_two_approvers_in_two_browsers(rig, login):
    alice, bob = login("alice"), login("bob")
    call = rig.agent("POST", "/v1/payouts?t=ui-two", json={"amount": 5000})
    hold = rig.wait_held("/v1/payouts?t=ui-two")
    alice.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    bob.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    alice.click("#approve")
    expect(alice.locator(".flash.message")).to_contain_text("1 more needed")
    expect(alice.locator("#cannot-decide")).to_contain_text("another reviewer")
    expect(bob.locator("#approvals-count")).to_have_text("1 of 2")  # bob's page followed live
    assert not call.done()
    bob.click("#approve")
    expect(bob.locator("#flow-status")).to_have_text("approved")
    assert call.result(timeout=10).status_code == 200
    assert decided_by(rig, hold["flow_id"], "approval")["actor"] == "alice"
    assert decided_by(rig, hold["flow_id"], "approved")["actor"] == "bob"


def test_escalation_lets_the_oncall_group_decide(rig, login):
    page = login("carol")
    call = rig.agent("POST", "/v1/escalate?t=ui-esc", json={})
    hold = rig.wait_held("/v1/escalate?t=ui-esc")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    if not rig.flow(hold["flow_id"])["escalated"]:
        expect(page.locator("#cannot-decide")).to_contain_text("finance-leads")
    expect(page.locator(".badge.warn")).to_have_text("escalated")  # the page updated itself
    page.click("#approve")
    expect(page.locator("#flow-status")).to_have_text("approved")
    assert call.result(timeout=10).status_code == 200
    assert decided_by(rig, hold["flow_id"], "approved")["actor"] == "carol"


def test_grant_then_revoke(rig, login):
    page = login("alice")
    path = "/v1/refunds?t=ui-grant"
    call = rig.agent("POST", path, json=REFUND)
    hold = rig.wait_held(path)
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    page.select_option("#grant", "5m")
    page.click("#approve-grant")
    expect(page.locator("#flow-status")).to_have_text("approved")
    assert call.result(timeout=10).status_code == 200
    assert rig.call("POST", path, json=REFUND, timeout=5).headers["X-Portcullis-Decision"] == "approved"

    page.click("nav >> text=Decisions")
    grant_row = page.locator("#grants tbody tr").filter(has_text="/v1/refunds?t=ui-grant")
    expect(grant_row).to_contain_text("alice")
    expect(grant_row.locator("td").nth(4)).to_have_text("1")  # uses
    grant_row.locator("button", has_text="Revoke").click()
    expect(page.locator(".flash.message")).to_contain_text("revoked")
    expect(page.locator("#grants tbody tr").filter(has_text="/v1/refunds?t=ui-grant")).to_have_count(0)
    again = rig.agent("POST", path, json=REFUND)
    third = rig.wait_held(path, exclude={hold["flow_id"]})
    rig.reject("bob", third["flow_id"])
    assert again.result(timeout=10).status_code == 403
    assert decided_by(rig, hold["flow_id"], "grant_revoked")["actor"] == "alice"


def test_forged_form_without_the_csrf_token_is_refused(rig, login):
    page = login("alice")
    call = rig.agent("POST", "/v1/refunds?t=ui-csrf", json=REFUND)
    hold = rig.wait_held("/v1/refunds?t=ui-csrf")
    page.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    page.evaluate("document.querySelector('#decide-form input[name=csrf_token]').value = 'forged'")
    page.click("#approve")
    expect(page.locator("#error-message")).to_contain_text("CSRF")
    assert rig.flow(hold["flow_id"])["status"] == "pending"
    rig.reject("bob", hold["flow_id"])
    assert call.result(timeout=10).status_code == 403


def test_self_approval_and_wrong_group_are_refused_in_the_page(rig, login):
    alice, dave = login("alice"), login("dave")
    call = rig.agent("POST", "/v1/refunds?t=ui-self", "alice", json=REFUND)
    hold = rig.wait_held("/v1/refunds?t=ui-self")
    alice.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    expect(alice.locator("#cannot-decide")).to_contain_text("own requests")
    expect(alice.locator("#approve")).to_have_count(0)
    dave.goto(f"{rig.ui_url}/flows/{hold['flow_id']}")
    expect(dave.locator("#cannot-decide")).to_contain_text("finance-leads")
    rig.reject("bob", hold["flow_id"])
    assert call.result(timeout=10).status_code == 403


def test_live_feed_survives_stream_reconnects(rig, login):
    page = login("bob")
    page.evaluate("window.__notReloaded = true")
    reconnects = "window.__opens = 0; window.portcullisLive.addEventListener('open', () => window.__opens++)"
    page.evaluate(reconnects)
    # wait_for_function evaluates strings, which our CSP forbids: poll instead.
    deadline = time.monotonic() + SSE_LIFETIME_S + 3
    while page.evaluate("window.__opens") < 1:
        assert time.monotonic() < deadline, "the live feed did not reconnect"
        time.sleep(0.1)
    call = rig.agent("POST", "/v1/anyone?t=ui-reconnect", json={})
    hold = rig.wait_held("/v1/anyone?t=ui-reconnect")
    expect(page.locator(f'tr[data-flow-id="{hold["flow_id"]}"]')).to_be_visible()
    assert page.evaluate("window.__notReloaded") is True
    rig.reject("bob", hold["flow_id"])
    expect(page.locator(f'tr[data-flow-id="{hold["flow_id"]}"]')).to_have_count(0)
    call.result(timeout=10)
