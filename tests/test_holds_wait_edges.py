"""Two edges of wait mode, in process (taddons/tflow, a real policy and hold book): a
held flow that mitmproxy ends with an error is abandoned, and a request changed while it
waited (e.g. edited in mitmproxy's own UI) is refused, not forwarded as approved."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.holds.addon import ApprovalsAddon
from addons.holds.book import Actor
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy

RULES = """
version: 1
default: allow
rules:
  - name: refunds
    match: {method: POST, path: /v1/refunds}
    action: hold
    approvers: [finance-leads]
    timeout: 30s
"""
FIN = Actor("fin", frozenset({"finance-leads"}))


def refund(body: bytes = b'{"amount": 900}'):
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.url = "http://api.example/v1/refunds"
    flow.request.headers.clear()
    flow.request.headers["Content-Type"] = "application/json"
    flow.request.raw_content = body
    return flow


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run(scenario) -> None:
    async def main() -> None:
        states = FlowStates()
        policy = compile_policy(RULES)
        addon = ApprovalsAddon(states, SimpleNamespace(policy=policy))
        with taddons.context(addon):
            addon.running()
            try:
                await scenario(addon, states, policy)
            finally:
                addon.done()

    asyncio.run(main())


def send(addon: ApprovalsAddon, states: FlowStates, policy, flow) -> asyncio.Task:
    state = states.of(flow)
    state.identity = "billing-agent"
    state.verdict = policy.evaluate(RequestView(flow, "billing-agent", frozenset()))
    return asyncio.create_task(addon.request(flow))


def test_a_held_flow_ended_by_an_error_is_abandoned_and_never_forwarded() -> None:
    async def scenario(addon: ApprovalsAddon, states: FlowStates, policy) -> None:
        flow = refund()
        waiting = send(addon, states, policy, flow)
        await until(lambda: addon.book.pending())
        flow.error = tflow.terr("client disconnected")
        addon.error(flow)
        await asyncio.wait_for(waiting, 3)
        assert states.of(flow).decision == "abandoned"
        assert addon.book.get(flow.id).decision == "abandoned"
        assert flow.response is None

    run(scenario)


def test_a_request_changed_while_it_waited_is_refused_not_forwarded() -> None:
    async def scenario(addon: ApprovalsAddon, states: FlowStates, policy) -> None:
        events: list = []
        states.bus.subscribe(events.append)
        flow = refund()
        waiting = send(addon, states, policy, flow)
        await until(lambda: addon.book.pending())
        flow.request.raw_content = b'{"amount": 900000}'  # not what the reviewer will see
        addon.book.approve(flow.id, FIN)
        await asyncio.wait_for(waiting, 3)
        state = states.of(flow)
        assert flow.response is not None and flow.response.status_code == 403
        body = json.loads(flow.response.content)
        assert body["error"] == "approval_mismatch"
        assert "differs from the approved one" in body["reason"]
        assert state.decision == "blocked"
        (mismatch,) = [e for e in events if e.kind == "approval_mismatch"]
        assert mismatch.detail["hold"] == flow.id

    run(scenario)
