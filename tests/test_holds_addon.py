"""The holds addon in process: mitmproxy's taddons/tflow, a real policy, the real desk.

What the addon itself does with flows (the book's rules are tests/test_hold_book.py):
wait mode woken by a reviewer deciding from another thread through the desk, timeout,
a client that hangs up, shutdown; async mode's 202, collection once, its refusals; the
hold limits (pending per identity, body size, duplicate keys), grants, escalation
timers, what a reviewer is shown (secrets redacted) and the body download.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from mitmproxy.connection import ConnectionState
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.holds.addon import ApprovalsAddon
from addons.holds.book import Actor, DecisionError
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy

RULES = """
version: 1
default: allow
max_pending_holds_per_identity: 2
max_held_body: 64KiB
rules:
  - name: refunds
    match: {method: POST, path: /v1/refunds}
    action: hold
    reason: "Refunds need a finance lead"
    approvers: [finance-leads]
    timeout: 30s
    grant: 15m
    grant_unsafe_methods: true   # a POST: granted only because the rule says so
  - name: quick
    match: {path: /v1/quick}
    action: hold
    timeout: 0.3s
  - name: escalating
    match: {path: /v1/escalate}
    action: hold
    approvers: [finance-leads]
    escalate_after: 0.1s
    escalate_to: [security-oncall]
"""
FIN = Actor("fin", frozenset({"finance-leads"}))
OPS = Actor("ops", frozenset({"security-oncall"}))


def request(path: str = "/v1/refunds", body: bytes = b'{"amount": 900}', headers: dict | None = None):
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.url = f"http://api.example{path}"
    flow.request.headers.clear()
    flow.request.headers["Content-Type"] = "application/json"
    for name, value in (headers or {}).items():
        flow.request.headers[name] = value
    flow.request.raw_content = body
    return flow


class Rig:
    """One addon over a compiled policy; ``send`` does what the policy addon leaves behind."""

    def __init__(self, rules: str = RULES) -> None:
        self.states = FlowStates()
        self.policy = compile_policy(rules)
        self.addon = ApprovalsAddon(self.states, SimpleNamespace(policy=self.policy))
        self.events: list = []
        self.states.bus.subscribe(self.events.append)

    def prepare(self, flow, identity: str = "billing-agent", control: dict | None = None):
        state = self.states.of(flow)
        state.identity = identity
        state.control.update({k.lower(): v for k, v in (control or {}).items()})
        state.verdict = self.policy.evaluate(RequestView(flow, identity, frozenset()))
        return state

    async def send(self, flow, identity: str = "billing-agent", **control: str):
        state = self.prepare(flow, identity, {k.replace("_", "-"): v for k, v in control.items()})
        await self.addon.request(flow)
        return state

    def kinds(self, flow_id: str) -> list[str]:
        return [e.kind for e in self.events if e.flow_id == flow_id]


def run(scenario):
    async def main():
        rig = Rig()
        with taddons.context(rig.addon):
            rig.addon.running()
            try:
                return await scenario(rig)
            finally:
                rig.addon.done()
    return asyncio.run(main())


def answer(flow) -> dict:
    return json.loads(flow.response.content)


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# --- wait mode ---------------------------------------------------------------------------


def test_wait_mode_is_released_by_an_approval_made_from_another_thread_through_the_desk():
    async def scenario(rig: Rig):
        flow = request()
        waiting = asyncio.create_task(rig.send(flow))
        await until(lambda: rig.addon.book.pending())
        # The review UI's thread: the desk hands the decision to this loop and waits.
        summary = await asyncio.to_thread(rig.addon.desk.approve, flow.id, FIN, "fine")
        assert summary["status"] == "approved" and summary["decided_by"] == "fin"
        state = await waiting
        assert flow.response is None  # forwarded
        assert (state.decision, state.actor, state.reason) == ("approved", "fin", "Refunds need a finance lead")
        assert rig.kinds(flow.id) == ["held", "approved"]
        assert rig.addon.book.get(flow.id).collected

    run(scenario)


def test_wait_mode_rejection_and_timeout_answer_json_refusals():
    async def scenario(rig: Rig):
        rejected = request()
        waiting = asyncio.create_task(rig.send(rejected))
        await until(lambda: rig.addon.book.pending())
        rig.addon.book.reject(rejected.id, FIN, "not today")
        state = await waiting
        body = answer(rejected)
        assert rejected.response.status_code == 403 and state.decision == "rejected"
        assert (body["error"], body["reviewer"], body["comment"], body["flow_id"]) == (
            "rejected_by_reviewer", "fin", "not today", rejected.id)

        quick = request("/v1/quick")
        state = await rig.send(quick)  # times out after 0.3 s
        assert quick.response.status_code == 403 and answer(quick)["error"] == "approval_expired"
        assert state.decision == "expired" and answer(quick)["reason"].startswith("no reviewer decided within")
        assert rig.kinds(quick.id) == ["held", "expired"]

    run(scenario)


def test_an_agent_that_hangs_up_is_abandoned_and_never_forwarded():
    async def scenario(rig: Rig):
        flow = request()
        waiting = asyncio.create_task(rig.send(flow))
        await until(lambda: rig.addon.book.pending())
        flow.client_conn.state = ConnectionState.CLOSED
        state = await asyncio.wait_for(waiting, 3)
        assert state.decision == "abandoned" and flow.error is not None  # killed
        assert rig.addon.book.get(flow.id).decision == "abandoned"
        with pytest.raises(DecisionError) as late:
            rig.addon.book.approve(flow.id, FIN)
        assert late.value.code == "already_decided"

    run(scenario)


def test_shutdown_expires_waiting_holds_with_a_reason():
    async def main():
        rig = Rig()
        with taddons.context(rig.addon):
            rig.addon.running()
            flow = request()
            waiting = asyncio.create_task(rig.send(flow))
            await until(lambda: rig.addon.book.pending())
            rig.addon.done()
            await waiting
        assert answer(flow)["error"] == "approval_expired" and answer(flow)["reason"] == "gateway_shutdown"

    asyncio.run(main())


# --- async mode ---------------------------------------------------------------------------


def test_async_mode_answers_202_and_the_approval_is_collected_once():
    async def scenario(rig: Rig):
        held = request()
        state = await rig.send(held, x_portcullis_wait="async", x_portcullis_justification="  ticket 42  ")
        body = answer(held)
        assert held.response.status_code == 202 and state.decision == "held"
        assert body["status"] == "pending" and body["resend_with_header"] == {"X-Portcullis-Approval": held.id}
        assert state.justification == "ticket 42"

        early = request()
        await rig.send(early, x_portcullis_approval=held.id)
        assert early.response.status_code == 202

        rig.addon.book.approve(held.id, FIN)
        collect = request()
        state = await rig.send(collect, x_portcullis_approval=held.id)
        assert collect.response is None and state.decision == "approved"
        assert rig.kinds(collect.id) == ["approval_used"]

        again = request()
        await rig.send(again, x_portcullis_approval=held.id)
        assert again.response.status_code == 409 and answer(again)["error"] == "approval_already_used"

    run(scenario)


def test_async_collection_refusals_are_recorded_decisions():
    async def scenario(rig: Rig):
        held = request()
        await rig.send(held, x_portcullis_wait="async")
        rig.addon.book.reject(held.id, FIN, "no")

        cases = [
            (request(), "billing-agent", "no-such-id", 404, "unknown_approval"),
            (request(), "other-agent", held.id, 403, "approval_mismatch"),
            (request(body=b'{"amount": 9000}'), "billing-agent", held.id, 403, "approval_mismatch"),
            (request(), "billing-agent", held.id, 403, "rejected_by_reviewer"),
        ]
        for flow, identity, approval, status, error in cases:
            state = await rig.send(flow, identity, x_portcullis_approval=approval)
            assert (flow.response.status_code, answer(flow)["error"]) == (status, error)
            if error != "rejected_by_reviewer":
                assert state.decision == "blocked" and rig.kinds(flow.id)[-1] == "decided"
        assert answer(cases[-1][0])["approval"] == held.id

    run(scenario)


def test_an_async_hold_expires_on_its_timer():
    async def scenario(rig: Rig):
        held = request("/v1/quick")
        await rig.send(held, x_portcullis_wait="async")
        await until(lambda: rig.addon.book.get(held.id).decision == "expired")
        collect = request("/v1/quick")
        await rig.send(collect, x_portcullis_approval=held.id)
        assert answer(collect)["error"] == "approval_expired" and answer(collect)["approval"] == held.id

    run(scenario)


# --- limits, grants, escalation --------------------------------------------------------------


def test_hold_limits_refuse_with_json_and_record_why():
    async def scenario(rig: Rig):
        for _ in range(2):
            await rig.send(request(), x_portcullis_wait="async")
        third = request()
        state = await rig.send(third, x_portcullis_wait="async")
        assert third.response.status_code == 429 and third.response.headers["Retry-After"] == "30"
        assert answer(third)["error"] == "too_many_pending_holds" and answer(third)["pending"] == 2
        assert state.decision == "blocked" and rig.kinds(third.id) == ["decided"]
        assert (await rig.send(request(), "another-agent", x_portcullis_wait="async")).decision == "held"

        big = request(body=b'{"x": "' + b"a" * 70_000 + b'"}')
        await rig.send(big, "big-agent")
        assert big.response.status_code == 413 and answer(big)["error"] == "held_body_too_large"

        dup = request(body=b'{"to": "acct-42", "TO": "attacker"}')
        await rig.send(dup, "dup-agent")
        assert dup.response.status_code == 400 and answer(dup)["error"] == "duplicate_json_key"
        assert rig.addon.book.find(big.id) is None and rig.addon.book.find(dup.id) is None

    run(scenario)


def test_a_grant_lets_the_identical_request_pass_and_names_the_granting_reviewer():
    async def scenario(rig: Rig):
        held = request()
        await rig.send(held, x_portcullis_wait="async")
        rig.addon.book.approve(held.id, FIN, "", 600.0)
        again = request()
        state = await rig.send(again)
        assert again.response is None and (state.decision, state.actor) == ("approved", "fin")
        assert rig.kinds(again.id) == ["grant_used"]
        other = request(headers={"X-Extra": "1"})
        await rig.send(other, x_portcullis_wait="async")
        assert other.response.status_code == 202  # not covered: held anew

    run(scenario)


def test_escalation_happens_on_its_timer_and_admits_the_escalation_group():
    async def scenario(rig: Rig):
        held = request("/v1/escalate")
        await rig.send(held, x_portcullis_wait="async")
        assert rig.addon.desk.may_decide(held.id, OPS)[0] is False
        await until(lambda: "escalated" in rig.kinds(held.id))
        assert rig.addon.desk.may_decide(held.id, OPS) == (True, None)

    run(scenario)


# --- what the reviewer sees ------------------------------------------------------------------


def test_reviewers_see_no_secret_header_or_injected_value_and_the_download_refuses_one():
    async def scenario(rig: Rig):
        held = request(body=b'{"note": "sk-live-123"}', headers={"Authorization": "Bearer agent-token"})
        state = rig.prepare(held, control={"x-portcullis-wait": "async"})
        state.secrets.add("sk-live-123")
        await rig.addon.request(held)
        details = await asyncio.to_thread(rig.addon.desk.get, held.id)
        assert ["Authorization", "[redacted]"] in details["headers"]
        assert "sk-live-123" not in details["body"] and "[redacted]" in details["body"]
        assert [e["kind"] for e in details["events"]] == ["held"]
        with pytest.raises(DecisionError) as refused:
            await asyncio.to_thread(rig.addon.desk.held_body, held.id)
        assert refused.value.code == "body_contains_secret"

        plain = request()
        await rig.send(plain, "other", x_portcullis_wait="async")
        raw, digest = await asyncio.to_thread(rig.addon.desk.held_body, plain.id)
        assert raw == b'{"amount": 900}' and len(digest) == 64
        rig.addon.book.reject(plain.id, FIN, "no")
        with pytest.raises(DecisionError) as released:
            await asyncio.to_thread(rig.addon.desk.held_body, plain.id)
        assert released.value.code == "body_released"

    run(scenario)


def test_the_desk_answers_503_when_the_gateway_is_not_running():
    rig = Rig()
    with pytest.raises(DecisionError) as down:
        rig.addon.desk.queue()
    assert (down.value.status, down.value.code) == (503, "gateway_not_running")


# --- notifications -----------------------------------------------------------------------------


def test_notifications_are_wired_to_the_bus_the_desk_the_policy_and_the_ui_address():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from addons.holds.notify import NotifyAddon

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"

    async def main():
        rig = Rig(RULES + f"notify:\n  - url: {url}\n    events: [held, rejected]\n")
        notify = NotifyAddon(rig.states, rig.addon.desk, SimpleNamespace(policy=rig.policy),
                             SimpleNamespace(url="http://127.0.0.1:8081"))
        with taddons.context(rig.addon, notify):
            rig.addon.running()
            notify.running()
            held = request()
            await rig.send(held, x_portcullis_wait="async")
            rig.addon.book.approve(held.id, FIN)  # not subscribed to: no webhook
            other = request()
            await rig.send(other, x_portcullis_wait="async")
            rig.addon.book.reject(other.id, FIN, "no")
            await until(lambda: len(received) >= 3)
            notify.done()
            rig.addon.done()
        return held, other

    try:
        held, other = asyncio.run(main())
    finally:
        server.shutdown()
    # Delivered by a pool of threads: in any order.
    by_event = {(r["event"], r["flow_id"]): r for r in received}
    assert sorted(by_event) == sorted([("held", held.id), ("held", other.id), ("rejected", other.id)])
    assert by_event["held", held.id]["review_url"] == f"http://127.0.0.1:8081/flows/{held.id}"
    assert by_event["rejected", other.id]["decided_by"] == "fin"
    assert by_event["rejected", other.id]["rule"] == "refunds"
