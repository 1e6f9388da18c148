"""The MCP engine in process: JSON-RPC reading, the mcp: key, batches, mirrored headers,
denial shapes, tools/list filtering (JSON, SSE, streamed SSE)."""

from __future__ import annotations

import json

import pytest
from mitmproxy.test import taddons, tflow

from addons.core.events import EventBus
from addons.core.flowstate import FlowStates
from addons.core.replies import JsonRpcShape, refuse
from addons.core.rulefile import RuleFileError
from addons.mcp import jsonrpc, toolslist
from addons.mcp.addon import McpAddon, always_blocked, header_mismatch, read_call
from addons.policy.addon import PolicyAddon
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy

RULES = """
version: 1
default: allow
rules:
  - name: no-drops
    match: {mcp: {tool: "drop_*"}}
    action: block
    reason: "no drops"
  - name: big-refunds
    match: {mcp: {tool: refund, arguments: {"$.amount": {gt: 100}}}}
    action: block
    reason: "big refunds"
    deny_as: tool_result
  - name: secrets
    match: {mcp: {method: resources/read, resource: "file:///secrets/**"}}
    action: block
  - name: shown-but-blocked
    match: {mcp: {tool: legacy_tool, list: show}}
    action: block
"""


def call(request_id, tool, **arguments):
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}


def mcp_flow(body, headers=()):
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.path = "/mcp"
    flow.request.headers["content-type"] = "application/json"
    for name, value in headers:
        flow.request.headers[name] = value
    flow.request.content = json.dumps(body).encode()
    return flow


def verdict(policy, body):
    return policy.evaluate(RequestView(mcp_flow(body)))


@pytest.fixture
def policy():
    return compile_policy(RULES)


# --- the mcp: key ---------------------------------------------------------------------


def test_tool_glob_and_typed_arguments(policy):
    assert verdict(policy, call(1, "drop_table", name="x")).rule.name == "no-drops"
    assert verdict(policy, call(1, "read_table", name="x")).action == "allow"
    assert verdict(policy, call(1, "refund", amount=500)).rule.name == "big-refunds"
    assert verdict(policy, call(1, "refund", amount="500")).rule.name == "big-refunds"  # typed, as json:
    assert verdict(policy, call(1, "refund", amount=5)).action == "allow"


def test_arguments_fail_closed(policy):
    from addons.policy.conditions import EvaluationError
    with pytest.raises(EvaluationError, match="needs a number"):
        verdict(policy, call(1, "refund", amount=[500]))
    with pytest.raises(EvaluationError, match="not an object"):
        verdict(policy, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "refund", "arguments": [1]}})
    with pytest.raises(EvaluationError, match="not a string"):
        verdict(policy, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": ["drop_x"]}})


def test_duplicate_and_case_variant_keys_are_judged_every_way(policy):
    from addons.policy.conditions import EvaluationError
    flow = mcp_flow({})
    flow.request.content = (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", '
                            b'"params": {"name": "drop_db", "NAME": "read_db"}}')
    with pytest.raises(EvaluationError, match="different answers"):
        policy.evaluate(RequestView(flow))


def test_resource_glob_and_method(policy):
    read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///secrets/db.env"}}
    assert verdict(policy, read).rule.name == "secrets"
    read["params"]["uri"] = "file:///notes/a.txt"
    assert verdict(policy, read).action == "allow"


def test_not_json_rpc_does_not_match(policy):
    assert verdict(policy, {"name": "drop_x", "method": "tools/call"}).action == "allow"  # no jsonrpc 2.0


def test_bad_keys_are_reported_with_their_place():
    with pytest.raises(RuleFileError, match="unknown key 'tools'"):
        compile_policy("version: 1\nrules:\n  - name: x\n    match: {mcp: {tools: a}}\n    action: block\n")
    with pytest.raises(RuleFileError, match="deny_as"):
        compile_policy("version: 1\nrules:\n  - name: x\n    match: {}\n    action: block\n    deny_as: xml\n")


# --- batches ---------------------------------------------------------------------------


def _addons(policy_text):
    states = FlowStates(EventBus())
    policy = PolicyAddon(states, holds_enabled=False)
    policy.policy = compile_policy(policy_text)
    mcp = McpAddon(states, policy)
    return states, policy, mcp


def _run(addons, flow):
    states, policy, mcp = addons
    mcp.request(flow)
    policy.request(flow)
    mcp.batches.request(flow)
    return states.of(flow)


def test_batch_hiding_a_blocked_call_behind_an_allowed_one_is_refused_with_an_error_per_id(policy):
    with taddons.context():
        addons = _addons(RULES)
        flow = mcp_flow([call(1, "read", a=1), call("b", "drop_all"),
                         {"jsonrpc": "2.0", "method": "notifications/cancelled"}])
        state = _run(addons, flow)
    assert state.decision == "blocked"
    answers = json.loads(flow.response.content)
    assert flow.response.status_code == 200
    assert [(a["id"], a["error"]["code"], a["error"]["data"]["rule"]) for a in answers] == [
        (1, -32001, "no-drops"), ("b", -32001, "no-drops")]


def test_batch_cannot_slip_past_default_block_through_an_allowed_element():
    rules = """
version: 1
default: block
rules:
  - name: reads
    match: {mcp: {tool: "read_*"}}
    action: allow
"""
    with taddons.context():
        addons = _addons(rules)
        flow = mcp_flow([call(1, "read_x"), call(2, "delete_everything")])
        state = _run(addons, flow)
        alone = mcp_flow([call(1, "read_x"), call(2, "read_y")])
        allowed = _run(addons, alone)
    assert state.decision == "blocked"
    assert [a["id"] for a in json.loads(flow.response.content)] == [1, 2]
    assert allowed.decision == "allowed" and alone.response is None


def test_tool_result_mode_for_tools_call_and_errors_for_the_rest():
    with taddons.context():
        addons = _addons(RULES)
        flow = mcp_flow(call(9, "refund", amount=1000))
        _run(addons, flow)
    answer = json.loads(flow.response.content)
    assert answer["id"] == 9 and "error" not in answer
    assert answer["result"]["isError"] is True
    assert answer["result"]["resultType"] == "complete"
    assert answer["result"]["content"][0]["text"].startswith("big refunds (Portcullis blocked_by_policy: rule big-refunds")


def test_notification_only_denial_is_202():
    status, _, _ = JsonRpcShape(()).render(403, {"error": "blocked_by_policy", "flow_id": "f"})
    assert status == 202


# --- mirrored headers --------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "problem"), [
    ({}, None),
    ({"Mcp-Method": "tools/call", "Mcp-Name": "read"}, None),
    ({"Mcp-Method": "tools/list"}, "Mcp-Method"),
    ({"Mcp-Method": "tools/call", "Mcp-Name": "drop_all"}, "Mcp-Name"),
])
def test_header_mismatch(headers, problem):
    flow = mcp_flow(call(1, "read"), headers.items())
    found = header_mismatch(flow.request.headers, read_call(flow))
    assert (found is None) if problem is None else (problem in found)


def test_header_for_a_batch_or_repeated_is_a_mismatch():
    flow = mcp_flow([call(1, "read"), call(2, "read")], [("Mcp-Method", "tools/call")])
    assert "batch" in header_mismatch(flow.request.headers, read_call(flow))
    flow = mcp_flow(call(1, "read"))
    flow.request.headers.add("Mcp-Name", "read")
    flow.request.headers.add("Mcp-Name", "drop")
    assert "more than once" in header_mismatch(flow.request.headers, read_call(flow))


def test_mismatch_is_refused_as_json_rpc_before_the_policy():
    with taddons.context():
        addons = _addons(RULES)
        flow = mcp_flow(call(3, "read"), [("Mcp-Method", "tools/call"), ("Mcp-Name", "drop_db")])
        state = _run(addons, flow)
    assert state.decision == "blocked"
    answer = json.loads(flow.response.content)
    assert (answer["id"], answer["error"]["code"], answer["error"]["data"]["error"]) == (3, -32004, "mcp_header_mismatch")


def test_any_refusal_of_an_mcp_flow_is_json_rpc():
    with taddons.context():
        states, _, mcp = _addons(RULES)
        flow = mcp_flow(call("x", "read"))
        mcp.request(flow)
        refuse(flow, states.of(flow), 429, "too_many_pending_holds", "wait")
    answer = json.loads(flow.response.content)
    assert answer["id"] == "x" and answer["error"]["code"] == -32000
    assert answer["error"]["message"].startswith("wait (Portcullis too_many_pending_holds")


# --- tools/list ----------------------------------------------------------------------------

TOOLS = {"jsonrpc": "2.0", "id": 2, "result": {"tools": [
    {"name": "read"}, {"name": "drop_db"}, {"name": "refund"}, {"name": "legacy_tool"}]}}


def test_always_blocked_counts_argument_conditions_both_ways(policy):
    flow = mcp_flow({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    state = FlowStates().of(flow)
    assert always_blocked(policy, flow, state, "drop_db") is True
    assert always_blocked(policy, flow, state, "refund") is False  # only big refunds
    assert always_blocked(policy, flow, state, "legacy_tool") is False  # list: show
    assert always_blocked(policy, flow, state, "read") is False


def test_filter_json_and_sse_bodies():
    hidden = {"drop_db"}.__contains__
    body, removed = toolslist.filter_body(json.dumps(TOOLS).encode(), "application/json", hidden)
    assert [t["name"] for t in json.loads(body)["result"]["tools"]] == ["read", "refund", "legacy_tool"]
    assert removed == ["drop_db"]
    sse = b"event: message\r\nid: 7\r\ndata: " + json.dumps(TOOLS).encode() + b"\r\n\r\n"
    body, removed = toolslist.filter_body(sse, "text/event-stream", hidden)
    events = list(jsonrpc.sse_events(body.decode()))
    assert events[0].lines[:2] == ["event: message", "id: 7"]
    assert "drop_db" not in events[0].data and removed == ["drop_db"]
    assert toolslist.filter_body(b"not json", "application/json", hidden) == (None, [])


def test_streamed_sse_is_filtered_event_by_event_across_chunks():
    stream = toolslist.SseFilter({"drop_db"}.__contains__)
    data = b": ping\n\n" + jsonrpc.sse_event(TOOLS)
    out = []
    for i in range(0, len(data), 7):
        out += stream(data[i:i + 7])
    out += stream(b"")
    text = b"".join(out).decode()
    assert text.startswith(": ping\n\n")
    assert "drop_db" not in text and '"refund"' in text
    assert stream.removed == ["drop_db"]


def test_tools_list_response_is_filtered_by_the_addon():
    with taddons.context():
        states, policy, mcp = _addons(RULES)
        flow = mcp_flow({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        _run((states, policy, mcp), flow)
        flow.response = tflow.tresp(content=json.dumps(TOOLS).encode())
        flow.response.headers["content-type"] = "application/json"
        mcp.response(flow)
    assert [t["name"] for t in json.loads(flow.response.content)["result"]["tools"]] == [
        "read", "refund", "legacy_tool"]
    assert flow.response.headers["X-Portcullis-Tools-Hidden"] == "1"


def test_review_description_and_earlier_calls():
    with taddons.context():
        states, policy, mcp = _addons(RULES)
        first = mcp_flow(call(1, "read", path="/a"), [("Mcp-Session-Id", "s1")])
        _run((states, policy, mcp), first)
        first.response = tflow.tresp()
        mcp.response(first)
        second = mcp_flow(call(2, "refund", amount=5), [("Mcp-Session-Id", "s1")])
        _run((states, policy, mcp), second)
        described = mcp.describe(second, states.of(second))
    assert described["tool"] == "refund"
    assert json.loads(described["arguments"]) == {"amount": 5}
    assert [c["tool"] for c in described["earlier"]] == ["read"]
    assert described["earlier"][0]["decision"] == "allowed"


def test_a_batch_too_large_to_judge_element_by_element_is_refused():
    with taddons.context():
        addons = _addons(RULES)
        flow = mcp_flow([call(i, "read") for i in range(101)])
        state = _run(addons, flow)
    assert state.decision == "blocked"
    answers = json.loads(flow.response.content)
    assert len(answers) == 101 and answers[0]["error"]["data"]["error"] == "mcp_batch_too_large"


# --- the shipped pack (rules/examples/mcp.yaml) ------------------------------------------


def test_the_example_pack_decides_as_its_comments_say():
    from addons.policy.engine import load_policy
    from gateway.settings import PROJECT_ROOT
    pack = load_policy(PROJECT_ROOT / "rules" / "examples" / "mcp.yaml")

    def decide(body):
        flow = mcp_flow(body)
        flow.request.host, flow.request.port, flow.request.scheme = "mcp.internal.example.com", 443, "https"
        found = pack.evaluate(RequestView(flow))
        return found.action, found.rule.name if found.rule else None, flow

    assert decide({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})[:2] == ("allow", "mcp-handshake")
    assert decide(call(2, "read_note", name="a"))[:2] == ("allow", "read-only-tools")
    assert decide(call(3, "delete_note", id=7))[:2] == ("hold", "destructive-tools-need-an-owner")
    assert decide(call(4, "delete_note", ids=[1, 2], all=True))[:2] == ("block", "no-mass-deletes")
    assert decide(call(5, "drop_table", name="t"))[:2] == ("block", "never-drop")
    assert decide(call(6, "exec_shell", cmd="ls"))[:2] == ("block", None)  # default
    flow = decide(call(7, "get_service_account"))[2]
    masked = pack.evaluate(RequestView(flow))
    assert masked.action == "allow" and "secrets-tool-masked" in masked.rule_names  # its mask applies
    _, _, flow = decide({"jsonrpc": "2.0", "id": 8, "method": "tools/list"})
    state = FlowStates().of(flow)
    hidden = [t for t in ("read_note", "delete_note", "drop_table", "exec_shell", "get_service_account")
              if always_blocked(pack, flow, state, t)]
    assert hidden == ["drop_table", "exec_shell"]


def test_injected_secrets_never_reach_the_review_description():
    with taddons.context():
        states, policy, mcp = _addons(RULES)
        flow = mcp_flow(call(1, "refund", amount=5, token="sk-live-123"), [("Mcp-Session-Id", "s9")])
        _run((states, policy, mcp), flow)
        states.of(flow).secrets.add("sk-live-123")
        flow.response = tflow.tresp()
        mcp.response(flow)
        later = mcp_flow(call(2, "refund", amount=6), [("Mcp-Session-Id", "s9")])
        _run((states, policy, mcp), later)
        states.of(later).secrets.add("sk-live-123")
        described = mcp.describe(flow, states.of(flow))
        earlier = mcp.describe(later, states.of(later))["earlier"]
    assert "sk-live-123" not in json.dumps(described) and "[redacted]" in described["arguments"]
    assert "sk-live-123" not in json.dumps(earlier) and "[redacted]" in earlier[0]["arguments"]


def test_only_posts_carry_mcp_messages(policy):
    flow = mcp_flow(call(1, "drop_x"))
    flow.request.method = "PUT"
    assert policy.evaluate(RequestView(flow)).action == "allow"
    get = tflow.tflow()
    get.request.headers["content-type"] = "application/octet-stream"
    get.request.content = b"\x00\x01binary"
    assert policy.evaluate(RequestView(get)).action == "allow"  # a GET: no message, no refusal


def test_tools_are_hidden_per_identity():
    policy = compile_policy("""
version: 1
default: allow
rules:
  - name: interns-may-not-refund
    match: {identity: intern, mcp: {tool: refund}}
    action: block
""")
    flow = mcp_flow({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    intern, lead = FlowStates().of(flow), FlowStates().of(flow)
    intern.identity, lead.identity = "intern", "lead"
    assert always_blocked(policy, flow, intern, "refund") is True
    assert always_blocked(policy, flow, lead, "refund") is False
