"""Audit browsing and replay end to end: a real gateway (recording, review UI), a real
upstream, agents through the proxy, reviewers in a real Chromium, the `portcullis replay` CLI.

One gateway for the module; the browser tests take fresh contexts, signed in with the
session of the reviewer's first (form) login in the module. Each test uses its own paths and session
ids so that the flows it looks for are its own.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.support import cli_run
from tests.support.browser import SignIns
from tests.support.module_servers import tls_server
from tests.support.review import ReviewRig
from tests.support.upstream import Canned, UpstreamServer

pytestmark = pytest.mark.browser

EXTRA_RULES = """
# (a line at column 0, so that the rig's dedent keeps these rules in the rules list)
  - name: audit-mask
    match: {path: "/v1/people/**"}
    mask: ["$.ssn"]
"""
BLOCK_LATER = """
  - name: now-blocked
    match: {path: "/v1/later/**"}
    action: block
    reason: "Blocked since the rules changed"
"""


CREDENTIALS = """
credentials:
  - name: audit-key
    match: {{path: "/v1/creds/**"}}
    set_header: {{X-Api-Key: "${{file:{key_file}}}"}}
    plain_http: true
"""


UPSTREAM_CA = """
upstreams:
  - host: "127.0.0.1"
    ca_bundle: {ca}
"""


@pytest.fixture(scope="module")
def tls_upstream(pki) -> Iterator[UpstreamServer]:
    server = tls_server(pki)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir, pki) -> Iterator[ReviewRig]:
    directory = tmp_path_factory.mktemp("audit")
    (directory / "api.key").write_text("key-at-recording-time")
    extra = EXTRA_RULES + CREDENTIALS.format(key_file=directory / "api.key") + UPSTREAM_CA.format(ca=pki.ca_cert)
    rig = ReviewRig(directory, confdir, extra_rules=extra)
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def sign_ins(browser) -> SignIns:
    return SignIns(browser)


@pytest.fixture
def login(sign_ins: SignIns, rig: ReviewRig) -> Iterator:
    """login(name): a fresh browser context on the flows page, signed in as ``name``
    (through the login form the first time in the module, then with that session)."""
    contexts = []

    def sign_in(name: str = "alice") -> Page:
        page = sign_ins.page(name, lambda page: rig.sign_in(page, name, "/audit/flows"),
                             rig.ui_url + "/audit/flows", accept_downloads=True)
        contexts.append(page.context)
        expect(page.locator("h1")).to_have_text("Flows")
        return page

    yield sign_in
    for context in contexts:
        context.close()


def flow_id(response: Any) -> str:
    return response.headers["X-Portcullis-Flow-Id"]


def params(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def recorded(rig: ReviewRig, **filters: str) -> list[dict]:
    response = rig.api("alice", "GET", "/api/audit/flows", params={"limit": "500", **filters})
    assert response.status_code == 200, response.text
    return response.json()["flows"]


def wait_recorded(rig: ReviewRig, count: int, **filters: str) -> list[dict]:
    return rig.wait_for(lambda: (found := recorded(rig, **filters)) and len(found) >= count and found,
                        what=f"{count} recorded flows for {filters}")


def replay(rig: ReviewRig, original: str, reviewer: str = "alice", wait: float = 10) -> Any:
    return rig.api(reviewer, "POST", f"/api/flows/{original}/replay", json={"wait": wait})


def add_rules(rig: ReviewRig, text: str) -> None:
    """Add rules at the top of the running gateway's rules list; wait for the hot reload."""
    before = sum("rules from" in line for line in rig.gateway.lines)
    path = rig.directory / "rules.yaml"
    path.write_text(path.read_text().replace("\nrules:\n", "\nrules:\n" + text.lstrip("\n"), 1))
    rig.wait_for(lambda: sum("rules from" in line for line in rig.gateway.lines) > before,
                 timeout=5, what="the rules to reload")


def portcullis(rig: ReviewRig, *args: str) -> subprocess.CompletedProcess:
    return cli_run.portcullis("replay", "--ui", rig.ui_url, "--token", rig.tokens["carol"], *args)


# --- browsing ---------------------------------------------------------------------------


def test_filter_and_paginate_flows(rig: ReviewRig, login):
    for i in range(55):
        rig.call("GET", f"/v1/paging/{i:02d}")
    rig.call("DELETE", "/v1/paging/x", identity="alice")
    wait_recorded(rig, 56, path="/v1/paging/")
    page = login()

    page.fill("#f-path", "/v1/paging/")
    page.select_option("#f-method", "GET")
    page.click("#apply-filters")
    assert params(page.url) == {"path": "/v1/paging/", "method": "GET"}
    rows = page.locator("#flows-table tr.flow")
    expect(rows).to_have_count(50)
    first_page = rows.evaluate_all("rows => rows.map(r => r.dataset.flowId)")
    assert all("/v1/paging/" in t for t in page.locator("#flows-table tr.flow .url").all_inner_texts())
    expect(page.locator("#flows-table .method")).to_have_text(["GET"] * 50)

    page.click("#page-older")
    expect(rows).to_have_count(5)
    second_page = rows.evaluate_all("rows => rows.map(r => r.dataset.flowId)")
    assert not set(first_page) & set(second_page)
    expect(page.locator("#page-older")).to_have_count(0)  # the last page
    # The page link keeps the filters, so it can be shared.
    assert params(page.url).keys() == {"path", "method", "after"}

    page.click("#page-newer")
    expect(rows).to_have_count(50)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.flowId)") == first_page

    # Newest first: the 55th request leads the first page.
    expect(rows.first.locator(".url")).to_contain_text("/v1/paging/54")

    # Another filter, by clicking an identity link: keeps the path filter, adds identity.
    page.select_option("#f-method", "")
    page.click("#apply-filters")
    page.locator("#flows-table tr.flow", has_text="DELETE").get_by_role("link", name="alice").click()
    expect(rows).to_have_count(1)
    assert params(page.url) == {"path": "/v1/paging/", "identity": "alice"}

    page.goto(rig.ui_url + "/audit/flows?status=abc")
    expect(page.locator("#flows-error")).to_contain_text("status")


def test_session_timeline_shows_order_decisions_reviewers_and_waits(rig: ReviewRig, login):
    session = {"X-Portcullis-Session": "audit-timeline-1"}
    rig.call("GET", "/v1/tl/one", headers=session)
    held = rig.agent("POST", "/v1/anyone?tl=two", headers=session, json={"n": 2})
    hold = rig.wait_held("/v1/anyone?tl=two")
    time.sleep(0.3)  # a visible wait
    assert rig.approve("bob", hold["flow_id"], "fine").status_code == 200
    assert held.result(timeout=10).status_code == 200
    rig.call("GET", "/v1/tl/three", headers=session)
    wait_recorded(rig, 3, session="audit-timeline-1")

    page = login()
    page.click("nav >> text=Sessions")
    page.get_by_role("link", name="audit-timeline-1").click()
    steps = page.locator("#timeline tr.step")
    expect(steps).to_have_count(3)
    expect(steps.locator("td:nth-child(3)")).to_contain_text(["/v1/tl/one", "/v1/anyone", "/v1/tl/three"])
    expect(steps.nth(1).locator(".decision")).to_have_text("approved")
    expect(steps.nth(1).locator(".reviewer")).to_have_text("bob")
    expect(steps.nth(1).locator(".wait-label")).to_contain_text("approved")
    expect(steps.nth(1).locator("svg rect.wait")).to_have_count(1)
    expect(steps.nth(0).locator("svg rect.wait")).to_have_count(0)
    expect(steps.nth(0).locator(".decision")).to_have_text("allowed")
    # From the timeline to the flow.
    steps.nth(1).locator("a.open").click()
    expect(page.locator("#flow-actor")).to_have_text("bob")
    expect(page.locator("#trail")).to_contain_text("held")
    expect(page.locator("#trail")).to_contain_text("approved")


# --- flow detail and replay --------------------------------------------------------------


def test_flow_detail_then_replay_shows_the_new_flow_linked_with_a_diff(rig: ReviewRig, login):
    calls = {"n": 0}

    def counter(seen) -> Canned:
        calls["n"] += 1
        body = {"name": "Ada", "ssn": "123-45-6789", "count": calls["n"], "items": [1, 2]}
        if calls["n"] > 1:
            body["items"] = [1]
            body["new"] = True
        return Canned(200, body)

    rig.upstream.routes["/v1/people/ada"] = counter
    original = flow_id(rig.call("POST", "/v1/people/ada?x=1", json={"q": "<script>alert(1)</script>"}))
    wait_recorded(rig, 1, path="/v1/people/ada")

    page = login()
    page.goto(f"{rig.ui_url}/audit/flows/{original}")
    expect(page.locator("#flow-id")).to_have_text(original)
    # Request and response side by side, JSON highlighted on the server, escaped.
    expect(page.locator("#request-body .j-key").first).to_have_text('"q"')
    expect(page.locator("#request-body")).to_contain_text("<script>alert(1)</script>")
    expect(page.locator("#response-body .j-num")).to_have_text(["1", "1", "2"])
    expect(page.locator("#response-body .masked")).to_have_text('"[masked]"')
    expect(page.locator(".masked-note code")).to_have_text("$.ssn")
    assert "123-45-6789" not in page.content()
    expect(page.locator("#trail")).to_contain_text("masked")
    with page.expect_download() as download:
        page.click("#response-download")
    assert b"[masked]" in download.value.path().read_bytes()

    page.click("#replay-button")
    expect(page.locator("#original-link")).to_have_text(original)
    new_id = page.locator("#flow-id").inner_text()
    assert new_id != original
    expect(page.locator("#flow-actor")).to_have_text("alice")
    comparison = page.locator("#comparison")
    expect(comparison.locator("#orig-status")).to_have_text("200")
    expect(comparison.locator("#replay-status")).to_have_text("200")
    diff = page.locator("#diff tbody tr")
    expect(diff).to_have_count(3)
    expect(diff.nth(0)).to_contain_text("changed")
    expect(diff.nth(0)).to_contain_text("$.count")
    expect(diff.nth(1)).to_contain_text("removed")
    expect(diff.nth(1)).to_contain_text("$.items[1]")
    expect(diff.nth(2)).to_contain_text("added")
    expect(diff.nth(2)).to_contain_text("$.new")
    # The replay went upstream with the same request, and is masked like any response.
    assert [r.json() for r in rig.received("/v1/people/ada?x=1")] == [{"q": "<script>alert(1)</script>"}] * 2
    expect(page.locator("#response-body .masked")).to_have_text('"[masked]"')

    # The original lists its replay, and its trail says who replayed it.
    page.click("#original-link")
    expect(page.locator("#replays .replay-row")).to_have_count(1)
    expect(page.locator("#replays")).to_contain_text("alice")
    expect(page.locator("#trail")).to_contain_text("replayed")
    row = next(f for f in recorded(rig, replays="only", path="/v1/people/ada"))
    assert (row["id"], row["replay_of"], row["actor"]) == (new_id, original, "alice")


def test_replay_that_now_matches_a_block_rule_is_blocked(rig: ReviewRig):
    original = flow_id(rig.call("GET", "/v1/later/report"))
    wait_recorded(rig, 1, path="/v1/later/report")
    add_rules(rig, BLOCK_LATER)

    result = replay(rig, original)
    assert result.status_code == 200, result.text
    body = result.json()
    assert (body["state"], body["status_code"], body["decision"], body["rules"]) == \
        ("done", 403, "blocked", ["now-blocked"])
    assert body["original"] == {"status_code": 200, "decision": "allowed", "rules": []}
    assert len(rig.received("/v1/later/report")) == 1  # the replay never reached the upstream
    row = wait_recorded(rig, 1, path="/v1/later/report", replays="only")[0]
    assert (row["decision"], row["replay_of"], row["actor"]) == ("blocked", original, "alice")


def test_replay_that_matches_a_hold_waits_for_approval(rig: ReviewRig, login):
    held = rig.agent("POST", "/v1/refunds?audit=hold", json={"amount": 120})
    hold = rig.wait_held("/v1/refunds?audit=hold")
    assert rig.approve("bob", hold["flow_id"]).status_code == 200
    assert held.result(timeout=10).status_code == 200
    wait_recorded(rig, 1, path="/v1/refunds", decision="approved")

    page = login("carol")
    page.goto(f"{rig.ui_url}/audit/flows/{hold['flow_id']}")
    page.click("#replay-button")
    # Held again: the reviewer lands on the hold's review page and the replay waits.
    expect(page.locator(".flash.warn[role=status]")).to_contain_text("held for approval (refunds)")
    replay_hold = rig.wait_held("/v1/refunds?audit=hold", exclude={hold["flow_id"]})
    new_id = replay_hold["flow_id"]
    assert replay_hold["identity"] == "billing-agent"  # rules run for the original agent
    assert len(rig.received("/v1/refunds?audit=hold")) == 1
    state = rig.api("carol", "GET", f"/api/replays/{new_id}").json()
    assert (state["state"], state["replay_of"], state["actor"]) == ("held", hold["flow_id"], "carol")

    assert rig.approve("alice", new_id, "re-run ok").status_code == 200
    done = rig.wait_for(lambda: (s := rig.api("carol", "GET", f"/api/replays/{new_id}").json())
                        ["state"] == "done" and s, what="the replay to finish")
    assert (done["status_code"], done["decision"], done["approved_by"]) == (200, "approved", "alice")
    assert len(rig.received("/v1/refunds?audit=hold")) == 2
    row = wait_recorded(rig, 1, path="/v1/refunds", replays="only")[0]
    assert (row["id"], row["actor"], row["decision"]) == (new_id, "carol", "approved")


def test_replay_injects_the_credentials_configured_now_not_recorded_ones(rig: ReviewRig):
    original = flow_id(rig.call("GET", "/v1/creds/balance", headers={"X-Api-Key": "agent-supplied"}))
    row = wait_recorded(rig, 1, path="/v1/creds/balance")[0]
    # No session header: the flow belongs to its identity's client connection.
    session = rig.api("alice", "GET", "/api/audit/session",
                      params={"identity": row["identity"], "client": row["client_addr"]}).json()["flows"]
    assert [f["id"] for f in session] == [original]
    (rig.directory / "api.key").write_text("key-rotated-since")
    add_rules(rig, "# reload: the key file changed\n")  # secret references resolve on (re)load

    result = replay(rig, original).json()
    assert (result["state"], result["status_code"]) == ("done", 200)
    sent = [r.headers.get("x-api-key") for r in rig.received("/v1/creds/balance")]
    assert sent == ["key-at-recording-time", "key-rotated-since"]


def test_replay_of_an_https_request(rig: ReviewRig, tls_upstream: UpstreamServer):
    with requests.Session() as agent:
        agent.trust_env = False
        sent = agent.post(tls_upstream.url("/v1/tls/echo?x=1"), json={"a": 1}, proxies=rig.proxies("billing-agent"),
                          verify=str(rig.gateway.ca_cert), timeout=10)
    assert sent.status_code == 200
    wait_recorded(rig, 1, path="/v1/tls/echo")
    result = replay(rig, flow_id(sent)).json()
    assert (result["state"], result["status_code"], result["decision"]) == ("done", 200, "allowed")
    assert [(r.method, r.path, r.json()) for r in tls_upstream.received] == [("POST", "/v1/tls/echo?x=1", {"a": 1})] * 2
    row = wait_recorded(rig, 1, path="/v1/tls/echo", replays="only")[0]
    assert (row["scheme"], row["identity"]) == ("https", "billing-agent")


def test_a_truncated_recording_is_not_replayed(rig: ReviewRig):
    big = "x" * (1024 * 1024 + 10)  # over the default 1 MiB recording cap
    original = flow_id(rig.call("POST", "/v1/big", data=big, headers={"Content-Type": "text/plain"}))
    wait_recorded(rig, 1, path="/v1/big")
    result = replay(rig, original)
    assert result.status_code == 409
    assert result.json()["error"] == "request_truncated"
    assert "truncated" in result.json()["message"]
    assert replay(rig, "no-such-flow").status_code == 404
    assert rig.api(None, "POST", f"/api/flows/{original}/replay").status_code == 401


# --- the CLI ------------------------------------------------------------------------------


def test_cli_replays_a_flow(rig: ReviewRig):
    original = flow_id(rig.call("GET", "/v1/cli/one"))
    wait_recorded(rig, 1, path="/v1/cli/one")
    done = portcullis(rig, original)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"{original}  GET 127\.0\.0\.1/v1/cli/one  was 200 allowed  now 200 allowed  -> \S+\n",
                        done.stdout)
    assert len(rig.received("/v1/cli/one")) == 2

    bad = cli_run.portcullis("replay", "--ui", rig.ui_url, "--token", "pcr_x_y", original, timeout=30)
    assert bad.returncode == 2 and "401" in bad.stderr


def test_cli_replays_a_session_in_order_and_stops_at_a_block(rig: ReviewRig):
    session = {"X-Portcullis-Session": "audit-cli-session"}
    for path in ("/v1/cli/s1", "/v1/cli-later/s2", "/v1/cli/s3"):
        assert rig.call("GET", path, headers=session).status_code == 200
    wait_recorded(rig, 3, session="audit-cli-session")
    add_rules(rig, BLOCK_LATER.replace("now-blocked", "cli-blocked").replace("/v1/later/", "/v1/cli-later/"))

    stopped = portcullis(rig, "--session", "audit-cli-session")
    assert stopped.returncode == 1
    lines = stopped.stdout.splitlines()
    assert len(lines) == 2
    assert "/v1/cli/s1  was 200 allowed  now 200 allowed" in lines[0]
    assert "/v1/cli-later/s2  was 200 allowed  now 403 blocked [cli-blocked]" in lines[1]
    assert "stopped" in stopped.stderr and "1 flows not replayed" in stopped.stderr

    kept_going = portcullis(rig, "--session", "audit-cli-session", "--continue")
    assert kept_going.returncode == 1
    assert [line.split("  ")[1] for line in kept_going.stdout.splitlines()] == \
        ["GET 127.0.0.1/v1/cli/s1", "GET 127.0.0.1/v1/cli-later/s2", "GET 127.0.0.1/v1/cli/s3"]
    assert len(rig.received("/v1/cli/s3")) == 2


# --- SQL ------------------------------------------------------------------------------------


def test_sql_page_answers_reads_and_refuses_writes(rig: ReviewRig, login):
    rig.call("GET", "/v1/sql/probe")
    wait_recorded(rig, 1, path="/v1/sql/probe")
    page = login()
    page.click("nav >> text=SQL")
    page.fill("#sql", "SELECT path, decision FROM flows WHERE path = '/v1/sql/probe'")
    page.click("#run-sql")
    expect(page.locator("#sql-results tbody tr")).to_have_count(1)
    expect(page.locator("#sql-results tbody td").first).to_have_text("/v1/sql/probe")
    with page.expect_download() as csv_download:
        page.click("#download-csv")
    assert csv_download.value.path().read_text() == "path,decision\n/v1/sql/probe,allowed\n"
    with page.expect_download() as parquet_download:
        page.click("#download-parquet")
    assert parquet_download.value.path().read_bytes()[:4] == b"PAR1"

    for statement in ("DELETE FROM flows", "UPDATE flows SET decision = 'allowed'",
                      "SELECT 1; DROP TABLE flows", "COPY flows TO '/tmp/x.csv'"):
        page.fill("#sql", statement)
        page.click("#run-sql")
        expect(page.locator("#sql-error")).to_contain_text("read_only")
    assert recorded(rig, path="/v1/sql/probe")  # still there
