"""Real MCP SDK clients (1.x and 2.x) and FastMCP servers through one real gateway.

The servers (mcp 2.3.0, Streamable HTTP, one in JSON and one in SSE response mode, both
in one process) and the clients run in their own virtualenvs (tests/support/sdk_venv.py:
the SDKs need an h11 the gateway's mitmproxy cannot have beside it). Each client major
runs one session per server with every step below, concurrently (one process per major),
once per module; the tests read its report.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support import sdk_venv
from tests.support.gateway import GatewayProcess

RULES = """
version: 1
default: allow
rules:
  - name: no-drops
    match: {mcp: {tool: "drop_*"}}
    action: block
    reason: "Agents may not drop databases"
  - name: forced-deletes
    match: {mcp: {tool: delete_note, arguments: {"$.force": {eq: true}}}}
    action: block
    reason: "Forced deletes are not allowed"
    deny_as: tool_result
"""

STEPS = [
    ["list"],
    ["call", "read_note", {"name": "a"}],
    ["call", "drop_database", {"name": "prod"}],
    ["call", "delete_note", {"name": "a", "force": True}],
    ["call", "read_note", {"name": "b"}],
    ["call", "call_log"],
]
MAJORS = ("mcp1", "mcp2")
MODES = ("json", "sse")


def _wait_ready(process, port: int) -> None:
    """An MCP_SERVER process printed "ready" and listens on ``port``."""
    sdk_venv.wait_listening(process, [port])


@pytest.fixture(scope="module")
def servers():
    """mode -> URL: a server per response mode, both in one process (sdk_venv.mcp_servers)."""
    with sdk_venv.mcp_servers({mode: (mode,) for mode in MODES}) as urls:
        yield urls


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp-sdk")
    rules = root / "rules.yaml"
    rules.write_text(RULES)
    process = GatewayProcess(rules, root / "conf").start()
    yield process
    process.stop_soon()  # nothing reads it after: its exit is awaited later (reap)


@pytest.fixture(scope="module")
def sessions(servers, gateway):
    """(major, mode) -> the client's report of one session with every step (a process per
    major, its sessions with both servers at once: sdk_venv.MCP_CLIENTS)."""
    for name in MAJORS:
        sdk_venv.ensure(name)
    modes = list(servers)
    with ThreadPoolExecutor(len(MAJORS)) as pool:
        futures = {major: pool.submit(sdk_venv.run_json, major, sdk_venv.MCP_CLIENTS,
                                      json.dumps([servers[mode] for mode in modes]), json.dumps(STEPS),
                                      gateway=gateway, timeout=90)
                   for major in MAJORS}
        return {(major, mode): report for major, future in futures.items()
                for mode, report in zip(modes, future.result(), strict=True)}


CASES = [(major, mode) for major in MAJORS for mode in MODES]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_blocked_call_surfaces_the_reason_and_the_session_survives(sessions, case):
    report = sessions[case]
    assert report["version"].startswith("1." if case[0] == "mcp1" else "2.")
    steps = report["steps"]
    assert (steps[1]["text"], steps[1]["is_error"]) == ("note a: hello", False)
    blocked = steps[2]
    assert blocked["exception"] in ("McpError", "MCPError"), blocked
    assert "Agents may not drop databases" in blocked["message"]
    assert "rule no-drops" in blocked["message"]
    # the session goes on: a later allowed call works, and the session still answers
    assert steps[4]["text"] == "note b: hello"
    assert report["survived"] is True


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_is_error_mode_reaches_the_model_as_a_failed_tool(sessions, case):
    step = sessions[case]["steps"][3]
    assert step["is_error"] is True, step
    assert "Forced deletes are not allowed" in step["text"]
    assert "rule forced-deletes" in step["text"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_tools_list_hides_tools_that_every_call_would_be_refused(sessions, case):
    tools = sessions[case]["steps"][0]["tools"]
    # drop_database is always blocked; delete_note only with force: it stays listed
    assert tools == ["call_log", "delete_note", "read_note"]


def test_refused_calls_never_reach_the_server(sessions):
    for case, report in sessions.items():
        calls = json.loads(report["steps"][5]["text"])
        assert ["drop_database", "prod"] not in calls, case
        assert ["delete_note", "a"] not in calls, case
        assert ["read_note", "a"] in calls, case


def _post(gateway, url: str, body, headers=None) -> requests.Response:
    return requests.post(url, data=json.dumps(body), timeout=10, proxies={"http": gateway.proxy_url},
                         headers={"content-type": "application/json",
                                  "accept": "application/json, text/event-stream", **(headers or {})})


def _call(request_id, tool, **arguments):
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}


def test_batch_with_a_denied_call_is_refused_whole_with_an_error_per_id(gateway, servers, sessions):
    url = servers["json"]
    batch = [_call(1, "read_note", name="x"), _call("two", "drop_database", name="prod"),
             {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}]
    response = _post(gateway, url, batch)
    assert response.status_code == 200
    assert response.headers["X-Portcullis-Decision"] == "blocked"
    answers = response.json()
    assert [a["id"] for a in answers] == [1, "two"]  # the notification gets no answer
    for answer in answers:
        assert answer["error"]["code"] == -32001
        assert answer["error"]["data"]["rule"] == "no-drops"
        assert answer["error"]["data"]["reason"] == "Agents may not drop databases"


def test_mirrored_headers_that_disagree_with_the_body_are_refused(gateway, servers):
    url = servers["json"]
    response = _post(gateway, url, _call(5, "read_note", name="x"),
                     {"Mcp-Method": "tools/call", "Mcp-Name": "drop_database"})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == 5
    assert body["error"]["code"] == -32004
    assert body["error"]["data"]["error"] == "mcp_header_mismatch"
    assert "Mcp-Name" in body["error"]["message"]
    response = _post(gateway, url, _call(6, "read_note", name="x"), {"Mcp-Method": "tools/list"})
    assert response.json()["error"]["code"] == -32004
