"""Approvals and grants are bound to what the reviewer saw (issue 12, finding 7).

In-process (mitmproxy's tflow/taddons) for the print and the state machine, then a
real gateway with its review API: an agent collects an approved ``POST /v1/payments``
adding ``X-HTTP-Method-Override: DELETE`` or ``X-Target-Env: prod`` (which a stricter
hold rule matches), or reuses a grant with another Content-Type or Authorization.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.holds.addon import ApprovalsAddon
from addons.holds.binding import RequestPrint, decode_body, shown_body
from addons.holds.book import Actor
from addons.policy.addon import capture_control_headers
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy
from review_ui.holds.review import pretty_body
from tests.support.module_servers import tls_server
from tests.support.review import AGENT_TOKENS, ReviewRig
from tests.support.upstream import UpstreamServer

RULES = """
version: 1
default: allow
rules:
  - name: payments
    match: {method: POST, path: /v1/payments}
    action: hold
    approvers: [finance-leads]
    grant: 15m
    grant_unsafe_methods: true   # a POST: granted only because the rule says so
  - name: prod-changes
    match: {path: /v1/payments, headers: {X-Target-Env: prod}}
    action: hold
    approvers: [security-oncall]
"""
FINANCE = Actor("fin", frozenset({"finance-leads"}))


def payment(headers: list[tuple[str, str]] | None = None, body: bytes = b'{"to": "acct-42", "amount": 10}'):
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.url = "http://api.example/v1/payments"
    flow.request.headers.clear()
    for name, value in headers if headers is not None else [("Content-Type", "application/json")]:
        flow.request.headers.add(name, value)
    flow.request.raw_content = body
    return flow


STATES = FlowStates()


def state_of(flow):
    return STATES.of(flow)


def evaluated(flow, policy, identity: str = "agent"):
    """What the policy addon leaves for the approvals addon: control headers, verdict."""
    state = state_of(flow)
    state.identity = identity
    capture_control_headers(flow, state)
    state.verdict = policy.evaluate(RequestView(flow, identity, frozenset()))
    return flow


def run(coroutine_factory):
    async def main():
        addon = ApprovalsAddon(STATES, SimpleNamespace(policy=None))
        with taddons.context(addon):
            return await coroutine_factory(addon)
    return asyncio.run(main())


async def hold_async(addon, policy, flow):
    flow.request.headers["X-Portcullis-Wait"] = "async"
    await addon.request(evaluated(flow, policy))
    assert flow.response.status_code == 202, flow.response.text
    return json.loads(flow.response.content)["flow_id"]


async def collect(addon, policy, flow, hold_id):
    flow.request.headers["X-Portcullis-Approval"] = hold_id
    await addon.request(evaluated(flow, policy))
    return flow.response


# --- the print ---------------------------------------------------------------------------


def test_the_print_binds_every_end_to_end_header_in_order_and_count():
    base = [("Content-Type", "application/json"), ("Accept", "*/*"), ("Authorization", "Bearer a")]
    held = RequestPrint.of(payment(base).request)
    same = [
        [(k.lower(), v) for k, v in base],  # HTTP/2 lower-cases names
        [*base, ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
         ("Proxy-Connection", "keep-alive"), ("Content-Length", "31"), ("Host", "api.example")],
    ]
    for headers in same:
        assert held.difference(RequestPrint.of(payment(headers).request)) is None, headers
    different = {
        "x-http-method-override": [*base, ("X-HTTP-Method-Override", "DELETE")],
        "x-target-env": [*base, ("X-Target-Env", "prod")],
        "content-type": [("Content-Type", "text/plain"), *base[1:]],
        "authorization": [*base[:2], ("Authorization", "Bearer b")],
        "order": [base[1], base[0], base[2]],
        "count": [*base, ("Accept", "*/*")],
        "value case": [("Content-Type", "Application/JSON"), *base[1:]],
    }
    for what, headers in different.items():
        differs = held.difference(RequestPrint.of(payment(headers).request))
        assert differs is not None, what
        assert "Bearer" not in differs  # values are never named
    assert "x-http-method-override" in held.difference(
        RequestPrint.of(payment(different["x-http-method-override"]).request))


def test_pretty_body_shows_a_document_with_duplicate_keys_as_sent():
    text = '{"to": "acct-42", "amount": 10, "to": "attacker"}'
    assert pretty_body(text) == (text, False)
    assert pretty_body('{"a": 1}') == ('{\n  "a": 1\n}', True)


def test_the_body_is_shown_decoded_as_the_policy_reads_it_not_by_the_declared_charset():
    # UTF-7 would read "+AGE-" as "a": the policy reads UTF-8, so must the reviewer.
    utf7 = payment([("Content-Type", "application/json; charset=utf-7")], b'{"note": "+AGE-"}')
    assert shown_body(decode_body(utf7.request), 1000).text == '{"note": "+AGE-"}'
    utf16 = payment([("Content-Type", "application/json")], '{"amount": 5}'.encode("utf-16-le"))
    assert shown_body(decode_body(utf16.request), 1000).text == '{"amount": 5}'
    big = payment(body=b'{"x": "' + b"a" * 70_000 + b'"}')
    shown = shown_body(decode_body(big.request), 64 * 1024)
    assert shown.truncated and len(shown.text) == 64 * 1024 and "Download the exact bytes" in shown.warning


# --- the state machine ---------------------------------------------------------------------


def test_collecting_with_an_added_header_is_refused_and_the_identical_request_passes():
    policy = compile_policy(RULES)

    async def scenario(addon):
        hold_id = await hold_async(addon, policy, payment())
        addon.book.approve(hold_id, FINANCE)
        override = await collect(addon, policy, payment([("Content-Type", "application/json"),
                                                         ("X-HTTP-Method-Override", "DELETE")]), hold_id)
        assert override.status_code == 403
        assert json.loads(override.content)["error"] == "approval_mismatch"
        assert "x-http-method-override" in json.loads(override.content)["reason"]
        assert not addon.book.get(hold_id).collected
        same = payment([("content-type", "application/json")])  # collected over h2: lower-case
        assert await collect(addon, policy, same, hold_id) is None  # forwarded
        assert state_of(same).decision == "approved"

    run(scenario)


def test_collecting_when_the_rules_now_decide_otherwise_is_refused():
    held_under = compile_policy(RULES)
    stricter = compile_policy(RULES + """
  - name: payments-freeze
    match: {method: POST, path: /v1/payments}
    action: hold
    approvers: [cfo]
""")

    async def scenario(addon):
        hold_id = await hold_async(addon, held_under, payment())
        addon.book.approve(hold_id, FINANCE)
        refused = await collect(addon, stricter, payment(), hold_id)
        assert refused.status_code == 403
        body = json.loads(refused.content)
        assert body["error"] == "approval_mismatch" and "payments-freeze" in body["reason"]
        assert await collect(addon, held_under, payment(), hold_id) is None

    run(scenario)


def test_a_grant_covers_only_the_same_headers_and_verdict_else_the_request_is_held_anew():
    policy = compile_policy(RULES)

    async def scenario(addon):
        hold_id = await hold_async(addon, policy, payment())
        addon.book.approve(hold_id, FINANCE, "", 600.0)
        used = evaluated(payment(), policy)
        await addon.request(used)
        assert used.response is None and state_of(used).decision == "approved"
        for headers in ([("Content-Type", "text/plain")],
                        [("Content-Type", "application/json"), ("Authorization", "Bearer other")],
                        [("Content-Type", "application/json"), ("X-Target-Env", "prod")]):
            other = payment(headers)
            other.request.headers["X-Portcullis-Wait"] = "async"
            await addon.request(evaluated(other, policy))
            assert other.response is not None and other.response.status_code == 202, headers
            assert addon.book.get(other.id).decision is None  # a fresh hold
        assert [g["uses"] for g in addon.book.active_grants()] == [1]

    run(scenario)


# --- through the real gateway ------------------------------------------------------------

EXTRA = """
# (column 0 keeps these in the rig's rules list)
  - name: payments
    match: {method: POST, path: /v1/payments}
    action: hold
    reason: "Payments need a finance lead"
    approvers: [finance-leads]
    grant: 15m
    grant_unsafe_methods: true   # a POST: granted only because the rule says so
  - name: prod-changes
    match: {path: /v1/payments, headers: {X-Target-Env: prod}}
    action: hold
    reason: "Production changes need security on-call"
    approvers: [security-oncall]
"""
FREEZE = """
  - name: payments-freeze
    match: {method: POST, path: /v1/payments}
    action: hold
    reason: "Payment freeze: the CFO decides"
    approvers: [cfo]
"""
UPSTREAM_CA = """
upstreams:
  - host: "127.0.0.1"
    ca_bundle: {ca}
"""
PAYMENT = {"to": "acct-42", "amount": 10}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir, pki) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("binding"), confdir,
                    extra_rules=EXTRA + UPSTREAM_CA.format(ca=pki.ca_cert))
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def tls_upstream(pki) -> Iterator[UpstreamServer]:
    server = tls_server(pki)
    yield server
    server.stop()


def curl(rig: ReviewRig, version: str, url: str, headers: dict[str, str]) -> tuple[str, dict]:
    """One POST of PAYMENT with curl over ``--http1.1`` or ``--http2``: (version status, body)."""
    proxy = f"http://billing-agent:{AGENT_TOKENS['billing-agent']}@127.0.0.1:{rig.gateway.port}"
    args = ["curl", "-s", version, "-x", proxy, "--cacert", str(rig.gateway.ca_cert),
            "-H", "Content-Type: application/json", "--data", json.dumps(PAYMENT)]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    result = subprocess.run([*args, "-w", "\n%{http_version} %{http_code}", url],
                            capture_output=True, text=True, timeout=30, check=True)
    body, _, summary = result.stdout.rpartition("\n")
    return summary, json.loads(body) if body.startswith("{") else {"raw": body}


def test_a_hold_made_over_http1_is_collected_over_http2(rig, tls_upstream):
    url = f"https://127.0.0.1:{tls_upstream.port}/v1/payments?t=h2"
    summary, pending = curl(rig, "--http1.1", url, {"X-Portcullis-Wait": "async"})
    assert summary == "1.1 202", (summary, pending)
    assert rig.approve("bob", pending["flow_id"]).status_code == 200
    collect = {"X-Portcullis-Approval": pending["flow_id"]}
    summary, refused = curl(rig, "--http2", url, {**collect, "X-Target-Env": "prod"})
    assert summary == "2 403" and refused["error"] == "approval_mismatch", refused
    assert tls_upstream.received == []
    # Same request over h2 (lower-case names, :authority instead of Host): it is the one approved.
    summary, _ = curl(rig, "--http2", url, collect)
    assert summary == "2 200"
    assert [r.path for r in tls_upstream.received] == ["/v1/payments?t=h2"]


def held_async(rig: ReviewRig, path: str, **kwargs) -> str:
    headers = {"X-Portcullis-Wait": "async", **kwargs.pop("headers", {})}
    pending = rig.call("POST", path, json=PAYMENT, headers=headers, **kwargs)
    assert pending.status_code == 202, pending.text
    return pending.json()["flow_id"]


def test_gateway_refuses_a_collection_that_adds_a_method_override_or_a_rule_triggering_header(rig):
    path = "/v1/payments?t=collect"
    flow_id = held_async(rig, path)
    assert rig.approve("bob", flow_id, "ok").status_code == 200
    collect = {"X-Portcullis-Approval": flow_id}
    # (X-HTTP-Method-Override itself is also refused on every route by the canonical-request
    # guard; the print's part in it is tested in-process above.)
    for added in ({"X-HTTP-Method-Override": "DELETE"}, {"X-Target-Env": "prod"},
                  {"Content-Type": "text/plain"}, {"X-Request-Note": "anything at all"}):
        response = rig.call("POST", path, data=json.dumps(PAYMENT),
                            headers={**collect, "Content-Type": "application/json", **added})
        assert response.status_code in (400, 403), (added, response.text)
        body = response.json()
        expected = {"approval_mismatch", "method_override_refused"} if "X-HTTP-Method-Override" in added \
            else {"approval_mismatch"}
        assert body["error"] in expected and body["flow_id"] and body["reason"], body
    assert rig.received(path) == []
    # Header names in another case (as HTTP/2 sends them) are the same request.
    done = rig.call("POST", path, data=json.dumps(PAYMENT),
                    headers={**collect, "content-type": "application/json"})
    assert done.status_code == 200 and done.headers["X-Portcullis-Decision"] == "approved", done.text
    assert len(rig.received(path)) == 1
    assert "x-http-method-override" not in {k.lower() for k in rig.received(path)[0].headers}


def test_gateway_grant_does_not_cover_other_headers_and_holds_them_anew(rig):
    path = "/v1/payments?t=grant"
    auth = {"Authorization": "Bearer agent-own-key"}
    call = rig.agent("POST", path, json=PAYMENT, headers=auth)
    hold = rig.wait_held(path)
    assert rig.approve("alice", hold["flow_id"], "recurring", grant="10m").status_code == 200
    assert call.result(timeout=10).status_code == 200
    again = rig.call("POST", path, json=PAYMENT, headers=auth, timeout=5)
    assert again.status_code == 200 and again.headers["X-Portcullis-Decision"] == "approved"
    seen = {hold["flow_id"]}
    for changed in ({"Authorization": "Bearer another-key"}, {**auth, "X-Request-Note": "anything"},
                    {**auth, "X-Target-Env": "prod"}, {**auth, "Content-Type": "text/plain"}):
        kwargs = {"data": json.dumps(PAYMENT)} if "Content-Type" in changed else {"json": PAYMENT}
        response = rig.call("POST", path, headers={**changed, "X-Portcullis-Wait": "async"}, timeout=5, **kwargs)
        assert response.status_code == 202, (changed, response.text)  # held anew, not granted
        seen.add(response.json()["flow_id"])
        rig.reject("bob" if "X-Target-Env" not in changed else "carol", response.json()["flow_id"])
    assert len(rig.received(path)) == 2


def reload_rules(rig: ReviewRig, text: str) -> None:
    """Rewrite the running gateway's rules file and wait for its hot reload."""
    before = sum("rules from" in line for line in rig.gateway.lines)
    Path(rig.gateway.rules).write_text(text)
    rig.wait_for(lambda: sum("rules from" in line for line in rig.gateway.lines) > before,
                 timeout=5, what="the rules to reload")


def test_gateway_refuses_a_collection_once_the_rules_decide_it_otherwise(rig):
    path = "/v1/payments?t=verdict"
    flow_id = held_async(rig, path)
    assert rig.approve("bob", flow_id).status_code == 200
    rules = rig.gateway.rules
    original = Path(rules).read_text()
    try:
        # At the top of the rules list (top-level keys such as upstreams follow it).
        reload_rules(rig, original.replace("\nrules:\n", "\nrules:\n" + FREEZE.lstrip("\n"), 1))
        collect = {"X-Portcullis-Approval": flow_id}
        response = rig.call("POST", path, json=PAYMENT, headers=collect)
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "approval_mismatch" and "payments-freeze" in response.json()["reason"]
        assert rig.received(path) == []
    finally:
        reload_rules(rig, original)
    done = rig.call("POST", path, json=PAYMENT, headers={"X-Portcullis-Approval": flow_id})
    assert done.status_code == 200, done.text


def test_utf16_body_is_shown_to_the_reviewer_as_the_policy_reads_it(rig):
    path = "/v1/payments?t=utf16"
    body = json.dumps(PAYMENT).encode("utf-16-le")
    pending = rig.call("POST", path, data=body, headers={"Content-Type": "application/json",
                                                         "X-Portcullis-Wait": "async"})
    assert pending.status_code == 202, pending.text
    details = rig.flow(pending.json()["flow_id"])
    assert json.loads(details["body"]) == PAYMENT
    assert details["body_sha256"] == hashlib.sha256(body).hexdigest()
    rig.reject("bob", pending.json()["flow_id"])
