"""Held MCP tool calls that clients survive, through one real gateway with its review UI.

* A held ``tools/call`` whose client accepts ``text/event-stream`` is answered at once as
  an SSE stream the gateway keeps alive (SSE comments, or ``notifications/progress``
  when the call carried a progressToken) until a reviewer decides; then the server's
  real response (or the JSON-RPC denial) follows on the same stream.
* An approved call whose client gave up admits one identical re-sent call (same
  identity, tool and canonical arguments; a new JSON-RPC id), once.

Real FastMCP servers (mcp 2.3.0) and real SDK clients (1.x and 2.x) in their own
virtualenvs (tests/support/sdk_venv.py); reviewers decide through the JSON API.
"""

from __future__ import annotations

import base64
import http.client
import json
import select
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from tests.support import sdk_venv
from tests.support.review import AGENT_TOKENS, PASSWORD_SUFFIX, ReviewRig
from tests.support.review_login import sign_in

EXTRA_RULES = """
# (column 0 keeps this rule in the rig's rules list)
  - name: mcp-deletes
    match: {mcp: {tool: delete_note}}
    action: hold
    reason: "Deleting a note needs a reviewer"
  - name: mcp-drops-expire
    match: {mcp: {tool: drop_database}}
    action: hold
    reason: "Drops wait briefly"
    timeout: 1s
"""


@pytest.fixture(scope="module")
def servers():
    """mode -> URL: a stateful SSE server (SDK sessions) and a stateless SSE and JSON one
    (raw JSON-RPC requests), in one process."""
    with sdk_venv.mcp_servers({"sse": ("sse",), "stateless-sse": ("sse", "stateless"),
                               "stateless-json": ("json", "stateless")}) as urls:
        yield urls


@pytest.fixture(scope="module")
def rig(tmp_path_factory, confdir):
    rig = ReviewRig(tmp_path_factory.mktemp("mcp-holds"), confdir, EXTRA_RULES)
    yield rig
    rig.stop()


def _call(request_id, name: str) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "delete_note", "arguments": {"name": name}}}


def _post(rig, url: str, body: dict, accept: str, **kwargs) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url, data=json.dumps(body), proxies=rig.proxies("billing-agent"),
                            headers={"content-type": "application/json", "accept": accept}, **kwargs)


def _hold_for(rig, note: str, timeout: float = 15) -> dict:
    def find():
        pending = rig.api("alice", "GET", "/api/pending").json()["pending"]
        return next((h for h in pending if f'"{note}"' in rig.flow(h["flow_id"]).get("body", "")), None)
    return rig.wait_for(find, timeout, f"a hold of delete_note {note}")


def _leave_once_held(rig, url: str, body: dict, note: str) -> dict:
    """The client that gives up: a JSON call (held, it gets nothing until the decision) on a
    connection of its own, closed once the call's hold is pending; that hold. Nothing
    may have been answered by then."""
    identity = "billing-agent"
    credentials = base64.b64encode(f"{identity}:{AGENT_TOKENS[identity]}".encode()).decode()
    connection = http.client.HTTPConnection("127.0.0.1", rig.gateway.port, timeout=10)
    try:
        connection.request("POST", url, body=json.dumps(body), headers={
            "Host": urlsplit(url).netloc, "Content-Type": "application/json", "Accept": "application/json",
            "Proxy-Authorization": f"Basic {credentials}"})
        hold = _hold_for(rig, note)
        answered, _, _ = select.select([connection.sock], [], [], 0)
        assert not answered, "a held call was answered before its decision"
    finally:
        connection.close()
    return hold


def _events(response: requests.Response):
    """(seconds since the request, SSE event text) as they arrive."""
    started = time.monotonic()
    buffer = ""
    for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
        buffer += chunk.replace("\r\n", "\n")  # sse-starlette ends lines with CRLF
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            yield time.monotonic() - started, event


def test_held_call_is_kept_alive_on_sse_then_gets_the_servers_real_response(rig, servers):
    url = servers["stateless-sse"]
    with _post(rig, url, _call(41, "sse-approved"), "application/json, text/event-stream",
               stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Portcullis-Decision"] == "held"
        events = _events(response)
        first_at, first = next(events)
        assert first.startswith(": held for approval"), first  # a comment: no progressToken
        hold = _hold_for(rig, "sse-approved")
        assert rig.approve("alice", hold["flow_id"], "ok").status_code == 200
        approved_at = time.monotonic()
        rest = [event for _, event in events]
        answered_after = time.monotonic() - approved_at
    messages = [json.loads(e.split("data: ", 1)[1]) for e in rest if "data: " in e]
    assert messages, rest
    assert messages[-1]["id"] == 41
    assert messages[-1]["result"]["content"][0]["text"] == "deleted sse-approved"
    assert first_at < 2.0  # headers and a first keepalive at once, not after the decision
    assert answered_after < 5.0
    row = rig.flow(hold["flow_id"])
    assert row["status"] == "approved"
    assert row["mcp"]["tool"] == "delete_note"  # what the review page shows (_mcp_call.html)
    assert json.loads(row["mcp"]["arguments"]) == {"name": "sse-approved"}
    # recorded: the held flow as the agent called it and received it, and the approved
    # call that went upstream as a replay of it
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    def recorded():
        rows = rig.api("alice", "GET", "/api/audit/flows?limit=50").json()["flows"]
        held = next((r for r in rows if r["id"] == hold["flow_id"]), None)
        carrier = next((r for r in rows if r["replay_of"] == hold["flow_id"]), None)
        return (held, carrier) if held and carrier else None

    held, carrier = rig.wait_for(recorded, what="both flows recorded")
    assert (held["host"], held["port"], held["path"], held["decision"]) == ("127.0.0.1", port, "/mcp", "approved")
    assert held["status_code"] == 200, held
    cookie, _ = sign_in(rig.ui_url, "alice", "alice" + PASSWORD_SUFFIX)
    document = rig.http.get(f"{rig.ui_url}/audit/flows/{hold['flow_id']}.json", headers={"Cookie": cookie},
                            timeout=10).json()
    recorded_body = json.dumps(document)
    assert "held for approval" in recorded_body and "deleted sse-approved" in recorded_body  # as sent
    assert (carrier["path"], carrier["decision"], carrier["status_code"]) == ("/mcp", "approved", 200)


def test_rejected_held_stream_ends_with_the_json_rpc_denial(rig, servers):
    with _post(rig, servers["stateless-sse"], _call("r1", "sse-rejected"),
               "application/json, text/event-stream", stream=True, timeout=30) as response:
        events = _events(response)
        next(events)
        hold = _hold_for(rig, "sse-rejected")
        assert rig.reject("alice", hold["flow_id"], "keep it").status_code == 200
        rest = [event for _, event in events]
    denial = json.loads(rest[-1].split("data: ", 1)[1])
    assert denial["id"] == "r1"
    assert denial["error"]["code"] == -32002
    assert "keep it" in denial["error"]["message"]
    assert denial["error"]["data"]["error"] == "rejected_by_reviewer"


@pytest.mark.parametrize("major", ["mcp1", "mcp2"])
def test_sdk_client_waits_through_a_hold_with_progress_and_gets_the_result(rig, servers, major):
    note = f"sdk-{major}"
    steps = [["progress", "delete_note", {"name": note}], ["call", "read_note", {"name": "after"}]]
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(sdk_venv.run_json, major, sdk_venv.MCP_CLIENT, servers["sse"],
                             json.dumps(steps), gateway=rig.gateway, timeout=90,
                             env={"PORTCULLIS_TEST_PROXY": rig.proxies("billing-agent")["http"]})
        hold = _hold_for(rig, note, timeout=40)
        assert rig.approve("alice", hold["flow_id"]).status_code == 200
        report = future.result()
    held, after = report["steps"]
    assert held["text"] == f"deleted {note}", held
    assert held["progress"] and "waiting for approval" in held["progress"][0][1]
    assert after["text"] == "note after: hello"
    assert report["survived"] is True


def test_approved_call_whose_client_gave_up_admits_one_identical_resend(rig, servers):
    url = servers["stateless-json"]
    hold = _leave_once_held(rig, url, _call(1, "gave-up"), "gave-up")
    # still pending: the client left, the reviewer decides
    assert rig.flow(hold["flow_id"])["status"] == "pending"
    assert rig.approve("alice", hold["flow_id"]).status_code == 200
    rig.wait_for(lambda: any(g["flow_id"] == hold["flow_id"]
                             for g in rig.api("alice", "GET", "/api/grants").json().get("grants", [])),
                 what="the re-send grant")
    retry = _post(rig, url, _call(2, "gave-up"), "application/json", timeout=10)
    assert retry.status_code == 200
    assert retry.json()["result"]["content"][0]["text"] == "deleted gave-up"
    assert retry.headers["X-Portcullis-Decision"] == "approved"
    # once: the next identical call is held again
    again = _leave_once_held(rig, url, _call(3, "gave-up"), "gave-up")
    assert again["flow_id"] != hold["flow_id"]
    rig.reject("alice", again["flow_id"])


def test_expired_held_stream_ends_with_the_json_rpc_expiry(rig, servers):
    body = {"jsonrpc": "2.0", "id": 77, "method": "tools/call",
            "params": {"name": "drop_database", "arguments": {"name": "x"}}}
    started = time.monotonic()
    with _post(rig, servers["stateless-sse"], body, "application/json, text/event-stream",
               stream=True, timeout=30) as response:
        events = [event for _, event in _events(response)]
    waited = time.monotonic() - started
    assert events[0].startswith(": held for approval")
    expiry = json.loads(events[-1].split("data: ", 1)[1])
    assert (expiry["id"], expiry["error"]["code"], expiry["error"]["data"]["error"]) == (
        77, -32003, "approval_expired")
    assert 0.8 < waited < 10  # kept open until the rule's 1 s expiry


def test_client_that_leaves_a_held_stream_collects_the_approval_with_a_plain_retry(rig, servers):
    url = servers["stateless-sse"]
    with _post(rig, url, _call(1, "left-stream"), "application/json, text/event-stream",
               stream=True, timeout=30) as response:
        next(_events(response))  # on the held stream ... then the client gives up
    hold = _hold_for(rig, "left-stream")
    # the gateway saw the client go (the held flow ended and was recorded) ...
    rig.wait_for(lambda: any(r["id"] == hold["flow_id"] for r in
                             rig.api("alice", "GET", "/api/audit/flows?limit=50").json()["flows"]),
                 what="the held flow's end recorded")
    assert rig.flow(hold["flow_id"])["status"] == "pending"  # ... and left the hold to its reviewer
    assert rig.approve("alice", hold["flow_id"]).status_code == 200
    rig.wait_for(lambda: any(g["flow_id"] == hold["flow_id"]
                             for g in rig.api("alice", "GET", "/api/grants").json().get("grants", [])),
                 what="the re-send grant")
    with _post(rig, url, _call(2, "left-stream"), "application/json, text/event-stream",
               stream=True, timeout=10) as retry:
        events = [event for _, event in _events(retry)]
    assert retry.headers["X-Portcullis-Decision"] == "approved"
    assert "deleted left-stream" in events[-1]


def test_retry_while_the_given_up_call_still_waits_joins_its_hold(rig, servers):
    url = servers["stateless-json"]
    hold = _leave_once_held(rig, url, _call(1, "joined"), "joined")
    with ThreadPoolExecutor(1) as pool:  # the retry, before anyone decided
        retry = pool.submit(_post, rig, url, _call(2, "joined"), "application/json", timeout=20)
        rig.wait_for(lambda: f"waits for the pending hold {hold['flow_id']}" in rig.gateway.output,
                     what="the retry to join the hold")
        pending = [h for h in rig.api("alice", "GET", "/api/pending").json()["pending"]
                   if '"joined"' in rig.flow(h["flow_id"]).get("body", "")]
        assert [h["flow_id"] for h in pending] == [hold["flow_id"]]  # no second hold
        assert rig.approve("alice", hold["flow_id"]).status_code == 200
        answer = retry.result()
    assert answer.json()["result"]["content"][0]["text"] == "deleted joined"
    assert answer.headers["X-Portcullis-Decision"] == "approved"
    # the approval was used by the retry: no re-send grant is left for a third call
    again = _leave_once_held(rig, url, _call(3, "joined"), "joined")
    assert again["flow_id"] != hold["flow_id"]
    rig.reject("alice", again["flow_id"])


def _progress_call(request_id, name: str, token) -> dict:
    body = _call(request_id, name)
    body["params"]["_meta"] = {"progressToken": token}
    return body


def _give_up_then_join(rig, url: str, note: str, retry: dict):
    """A first call that gives up once held (JSON), then the retry on SSE: (hold, response, events)."""
    hold = _leave_once_held(rig, url, _call(1, note), note)
    # read timeout 5 s: a retry kept in the request hook sends nothing until the decision
    response = _post(rig, url, retry, "application/json, text/event-stream", stream=True, timeout=5)
    return hold, response, _events(response)


def test_retry_that_joins_a_pending_hold_gets_the_kept_alive_stream_then_the_result(rig, servers):
    url = servers["stateless-sse"]
    hold, response, events = _give_up_then_join(rig, url, "joined-sse", _progress_call(2, "joined-sse", "tok-7"))
    with response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Portcullis-Decision"] == "held"
        first_at, first = next(events)
        progress = json.loads(first.split("data: ", 1)[1])
        assert progress["method"] == "notifications/progress"
        assert progress["params"]["progressToken"] == "tok-7"
        assert "Deleting a note needs a reviewer" in progress["params"]["message"]
        assert first_at < 2.0
        # The log line is written before the stream opens, but read from the process's
        # output by another thread: wait for it rather than race it.
        rig.gateway.wait_for_output(f"waits for the pending hold {hold['flow_id']}")
        pending = [h for h in rig.api("alice", "GET", "/api/pending").json()["pending"]
                   if '"joined-sse"' in rig.flow(h["flow_id"]).get("body", "")]
        assert [h["flow_id"] for h in pending] == [hold["flow_id"]]  # joined: no second hold
        assert rig.approve("alice", hold["flow_id"]).status_code == 200
        rest = [event for _, event in events]
    messages = [json.loads(e.split("data: ", 1)[1]) for e in rest if "data: " in e]
    assert messages[-1]["id"] == 2
    assert messages[-1]["result"]["content"][0]["text"] == "deleted joined-sse"
    # the approval went to this retry: a third identical call is held again
    again = _leave_once_held(rig, url, _call(3, "joined-sse"), "joined-sse")
    assert again["flow_id"] != hold["flow_id"]
    rig.reject("alice", again["flow_id"])


def test_retry_that_joins_a_pending_hold_on_sse_gets_comments_then_the_denial(rig, servers):
    url = servers["stateless-sse"]
    hold, response, events = _give_up_then_join(rig, url, "joined-rejected", _call("j2", "joined-rejected"))
    with response:
        _, first = next(events)
        assert first.startswith(": held for approval"), first  # no progressToken: a comment
        assert rig.reject("alice", hold["flow_id"], "not this one").status_code == 200
        rest = [event for _, event in events]
    denial = json.loads(rest[-1].split("data: ", 1)[1])
    assert denial["id"] == "j2"  # the retry's own id
    assert denial["error"]["code"] == -32002
    assert "not this one" in denial["error"]["message"]
    assert denial["error"]["data"]["error"] == "rejected_by_reviewer"
