"""Attacks on the approval path: hostile text in front of reviewers, routes without
login, forged cross-site requests, approvals reused for other bodies, SQL tricks.

A real gateway with its review UI (ReviewRig) and a real Chromium for the rendering
tests. Agent- and upstream-controlled strings are planted in every field a reviewer
sees; nothing may execute, and every payload must show up as plain text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import Page, expect

from review_ui import create_app
from review_ui.reviewers import ReviewerStore
from tests.support.hold_desk import idle_desk
from tests.support.review import PASSWORD_SUFFIX, ReviewRig
from tests.support.upstream import Canned

MARK = "window.__pwned = (window.__pwned || 0) + 1"
PAYLOADS = [
    f"<script>{MARK}</script>",
    f'"><img src=x onerror="{MARK}">',
    f"javascript:{MARK}",
    f"'><svg onload='{MARK}'>",
    "{{7*7}}${7*7}<%= 7*7 %>{{config.SECRET_KEY}}{% raw %}",
]
EVIL = " ".join(PAYLOADS)
ROUTE_PARAMS = {"flow_id": None, "grant_id": "g-unknown", "part": "request", "new_id": "n-unknown",
                "filename": "app.css"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    # The planted hold must stay pending through the whole module (over 30 s on a loaded
    # machine: it expired mid-module once), so its hold and its agent wait 10 minutes.
    rig = ReviewRig(tmp_path_factory.mktemp("attacks"), confdir, hold_timeout="10m")
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def planted(rig: ReviewRig) -> dict[str, str]:
    """A held request and a completed one, both full of payloads; returns their flow ids."""
    rig.upstream.routes["/v1/orders/evil"] = Canned(200, {"note": EVIL, EVIL: "key"},
                                                    {"X-Upstream-Note": EVIL.replace("\n", " ")})
    session = {"X-Portcullis-Session": EVIL[:150]}
    done = rig.call("GET", "/v1/orders/evil?q=" + quote(EVIL), headers={"X-Agent-Note": EVIL, **session})
    assert done.status_code == 200
    rig.agent("POST", "/v1/refunds?note=" + quote(EVIL), json={"amount": 250, "note": EVIL, EVIL: EVIL},
              headers={"X-Portcullis-Justification": EVIL, "X-Agent-Note": EVIL, **session}, timeout=600)
    hold = rig.wait_held("/v1/refunds?note=" + quote(EVIL))
    return {"held": hold["flow_id"], "completed": done.headers["X-Portcullis-Flow-Id"]}


def sign_in(browser, rig: ReviewRig, name: str = "alice") -> Page:
    page = rig.sign_in(browser.new_context().new_page(), name, "/login")
    expect(page.locator("h1")).to_have_text("Pending requests")
    return page


@pytest.mark.browser
def test_planted_payloads_never_execute_and_show_as_text(browser, rig, planted):
    page = sign_in(browser, rig)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    pages = [
        "/", f"/flows/{planted['held']}", f"/audit/flows/{planted['held']}",
        f"/audit/flows/{planted['completed']}", "/audit/flows", "/audit/sessions", "/decisions",
        "/audit/sql?q=" + quote("SELECT request_body, response_body FROM flows"),
    ]
    for path in pages:
        page.goto(rig.ui_url + path)
        page.wait_for_load_state("load")
        assert page.evaluate("window.__pwned") is None, path
        # No element the payloads could have created, and no javascript: link.
        assert page.locator("img[src=x], svg[onload], [onerror], a[href^='javascript:' i]").count() == 0, path
        scripts = page.eval_on_selector_all("script", "els => els.map(e => e.src || 'INLINE')")
        assert all(src.startswith(rig.ui_url + "/static/") for src in scripts), (path, scripts)
        # A template engine evaluating agent text would have turned "{{7*7}}${7*7}" into "49${7*7}".
        assert "49${7*7}" not in page.locator("body").inner_text(), path
    # Where the payloads are shown, they are shown literally.
    page.goto(rig.ui_url + f"/flows/{planted['held']}")
    body = page.locator("body").inner_text()
    for payload in PAYLOADS:
        assert payload in body, payload
    assert dialogs == [] and violations == [], (dialogs, violations)
    # Its review page (live feed, a 1 s clock) would otherwise go on rendering every update
    # of the module's other tests until the module is over (the browser fixture closes it
    # then, also after a failure here).
    page.context.close()


def test_every_response_carries_a_csp_without_inline_script(rig, planted):
    for path in ["/login", "/static/app.css"]:
        csp = rig.http.get(rig.ui_url + path).headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    api = rig.api("alice", "GET", f"/api/flows/{planted['held']}")
    assert "script-src 'self'" in api.headers["Content-Security-Policy"]
    assert api.headers["Content-Type"].startswith("application/json")
    # Agent text inside JSON is data, not markup: still escaped JSON, never HTML.
    assert "<script>" in json.dumps(api.json())


def ui_routes() -> list[tuple[str, str]]:
    """(method, rule) for every route of the review UI, from Flask's own URL map."""
    app = create_app(idle_desk(), ReviewerStore(None))
    return sorted((method, rule.rule) for rule in app.url_map.iter_rules()
                  for method in rule.methods - {"HEAD", "OPTIONS"})


def concrete(rule: str, flow_id: str) -> str:
    params = {**ROUTE_PARAMS, "flow_id": flow_id}
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: params[m.group(1)], rule)


PUBLIC = {("GET", "/login"), ("POST", "/login"), ("GET", "/static/<path:filename>"),
          ("GET", "/favicon.ico")}  # a redirect to the static icon
#: Authenticated by Slack's request signature instead of a login (review_ui.slack; its
#: signature checks are tests/test_slack_interactions.py). Here, without slack: settings,
#: it answers 404; with them, an unsigned request 401. Either way nothing is decided.
SIGNED = {("POST", "/slack/interactions")}


@pytest.mark.parametrize(("method", "rule"), ui_routes())
def test_every_route_but_login_and_static_requires_login(rig, planted, method, rule):
    if (method, rule) in PUBLIC:
        return
    url = rig.ui_url + concrete(rule, planted["held"])
    anonymous = rig.http.request(method, url, allow_redirects=False, timeout=10)
    bogus = rig.http.request(method, url, allow_redirects=False, timeout=10,
                             headers={"Authorization": "Bearer pcr_forged_token"},
                             cookies={"portcullis_session": "forged.session.cookie"})
    refused = (401, 404) if (method, rule) in SIGNED else (302, 303, 401, 403)
    for response in (anonymous, bogus):
        assert response.status_code in refused, (method, rule, response.status_code)
        if response.status_code in (302, 303):
            assert "/login" in response.headers["Location"]
    assert rig.flow(planted["held"])["status"] == "pending"  # nothing was decided on the way


def session_cookie(rig: ReviewRig, name: str = "bob") -> tuple[str, str]:
    """Sign in with the form; returns (cookie header, the page's CSRF token). The cookie
    is Secure, which requests will not send over http: we send it by hand."""
    page = rig.http.get(rig.ui_url + "/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    before = page.cookies.get("portcullis_session")
    response = rig.http.post(rig.ui_url + "/login", allow_redirects=False, timeout=10,
                             data={"name": name, "password": name + PASSWORD_SUFFIX, "csrf_token": token},
                             headers={"Cookie": f"portcullis_session={before}"})
    assert response.status_code in (302, 303), response.text
    cookie = response.cookies.get("portcullis_session")
    assert cookie and cookie != before  # a new session at login: no fixation
    queue = rig.http.get(rig.ui_url + "/", headers={"Cookie": f"portcullis_session={cookie}"})
    fresh = re.search(r'name="csrf_token" value="([^"]+)"', queue.text)
    return f"portcullis_session={cookie}", fresh.group(1) if fresh else ""


STATE_CHANGING = [(m, r) for m, r in ui_routes() if m in ("POST", "PUT", "PATCH", "DELETE") and r != "/login"]


@pytest.mark.parametrize(("method", "rule"), STATE_CHANGING)
def test_state_changing_routes_refuse_requests_without_the_csrf_token(rig, planted, method, rule):
    cookie, token = session_cookie(rig)
    assert token
    url = rig.ui_url + concrete(rule, planted["held"])
    for attempt in ({"data": {"comment": "x", "action": "approve"}},
                    {"data": {"comment": "x", "action": "approve", "csrf_token": "forged"}},
                    {"json": {"comment": "x"}}):
        response = rig.http.request(method, url, allow_redirects=False, timeout=10,
                                    headers={"Cookie": cookie, "Origin": "http://evil.example"}, **attempt)
        refused = (401, 404) if (method, rule) in SIGNED else (400, 401, 403)
        assert response.status_code in refused, (method, rule, attempt, response.status_code)
    assert rig.flow(planted["held"])["status"] == "pending"


def test_an_approval_is_only_for_the_body_that_was_reviewed(rig):
    agent = {"identity": "billing-agent", "headers": {"X-Portcullis-Wait": "async"}}
    pending = rig.call("POST", "/v1/refunds?t=rebind", json={"amount": 150}, **agent)
    assert pending.status_code == 202
    flow_id = pending.json()["flow_id"]
    assert rig.approve("alice", flow_id).status_code == 200
    collect = {"X-Portcullis-Approval": flow_id}
    for body in ({"amount": 150000}, {"amount": 150, "amount_extra": 1}):
        swapped = rig.call("POST", "/v1/refunds?t=rebind", json=body, headers=collect)
        assert swapped.status_code == 403 and swapped.json()["error"] == "approval_mismatch"
    other_url = rig.call("POST", "/v1/refunds?t=other", json={"amount": 150}, headers=collect)
    assert other_url.status_code == 403
    other_agent = rig.call("POST", "/v1/refunds?t=rebind", identity="alice", json={"amount": 150},
                           headers=collect)
    assert other_agent.status_code == 403
    assert rig.received("/v1/refunds?t=rebind") == []
    assert rig.call("POST", "/v1/refunds?t=rebind", json={"amount": 150}, headers=collect).status_code == 200
    assert [r.json() for r in rig.received("/v1/refunds?t=rebind")] == [{"amount": 150}]
    again = rig.call("POST", "/v1/refunds?t=rebind", json={"amount": 150}, headers=collect)
    assert again.status_code == 409


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0x7f.0.0.1", "0177.0.0.1", "127.000.0.1",
                                  "[::1]", "[0:0:0:0:0:ffff:7f00:1]", "localhost.localdomain"])
def test_the_ui_is_unreachable_through_the_proxy_by_any_spelling(rig, host):
    with requests.Session() as session:
        session.trust_env = False
        try:
            response = session.get(f"http://{host}:{rig.ui_port}/api/pending", timeout=10,
                                   proxies=rig.proxies("billing-agent"),
                                   headers={"Authorization": f"Bearer {rig.tokens['alice']}"})
        except requests.RequestException:
            return  # refused outright: also fine
    assert response.status_code in (403, 502), (host, response.status_code, response.text[:200])
    assert "pending" not in response.json()


def test_ui_filters_are_parameters_not_sql(rig, planted):
    attacks = ["' OR 1=1 --", "%' UNION SELECT id FROM flows --", "x'); DROP TABLE flows; --", "\\' OR '1'='1"]
    for field in ("identity", "host", "path", "method", "session"):
        for attack in attacks:
            response = rig.api("alice", "GET", "/api/audit/flows", params={field: attack})
            assert response.status_code in (200, 400), (field, attack, response.text[:200])
            if response.status_code == 200:
                assert response.json()["flows"] == [], (field, attack)
    everything = rig.api("alice", "GET", "/api/audit/flows").json()["flows"]
    assert planted["completed"] in [f["id"] for f in everything]  # the table is still there


@pytest.mark.parametrize("sql", [
    "SELECT content FROM read_text('/etc/hostname')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT content FROM read_text('{reviewers}')",
    "DELETE FROM flows",
    "SELECT 1; DROP TABLE flows",
    "COPY flows TO '/tmp/portcullis-stolen.csv'",
    "ATTACH '/tmp/x.duckdb' AS x",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "CREATE TEMP TABLE t AS SELECT 1",
])
def test_analyst_sql_is_read_only_and_cannot_reach_files(rig, planted, sql):
    cookie, _ = session_cookie(rig, "carol")
    query = sql.format(reviewers=rig.reviewers_file)
    page = rig.http.get(rig.ui_url + "/audit/sql", params={"q": query}, headers={"Cookie": cookie}, timeout=10)
    assert page.status_code == 400, (sql, page.status_code)
    assert "pcr_" not in page.text and "scrypt" not in page.text and "root:" not in page.text
    count = rig.http.get(rig.ui_url + "/audit/sql", params={"q": "SELECT count(*) AS n FROM flows"},
                         headers={"Cookie": cookie}, timeout=10)
    assert count.status_code == 200
