"""tools/list results that stream as JSON (chunked, or large enough to stream) are
filtered too: buffered whole up to toolslist.MAX_TOOLS_LIST_BYTES, a longer one refused
with a JSON-RPC error naming the limit.

In process (mitmproxy.test.tflow) for the stream callback; end to end through one real
gateway with a real upstream on 127.0.0.1 that answers chunked, large, gzip-compressed
and over-limit tools/list results.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from mitmproxy.test import taddons, tflow

from addons.masking.streamhooks import STREAM_ABOVE
from addons.mcp import toolslist
from tests.support.gateway import GatewayProcess
from tests.test_mcp_engine import RULES, TOOLS, _addons, _run, mcp_flow

LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def _streamed(flow, body: bytes, chunk: int = 5, headers=()) -> bytes:
    """Run ``body`` through the flow's response stream the way mitmproxy does."""
    out = []
    for i in range(0, len(body), chunk):
        produced = flow.response.stream(body[i:i + chunk])
        out += [produced] if isinstance(produced, bytes) else list(produced)
    produced = flow.response.stream(b"")
    out += [produced] if isinstance(produced, bytes) else list(produced)
    return b"".join(out)


def _streaming_list(addons, headers: dict[str, str]):
    states, policy, mcp = addons
    flow = mcp_flow(LIST)
    _run(addons, flow)
    flow.response = tflow.tresp(content=b"")
    flow.response.headers.clear()
    for name, value in headers.items():
        flow.response.headers[name] = value
    flow.response.stream = True
    mcp.streams.responseheaders(flow)
    return flow, states.of(flow)


def test_chunked_json_tools_list_is_buffered_and_filtered():
    with taddons.context():
        addons = _addons(RULES)
        flow, state = _streaming_list(addons, {"content-type": "application/json"})
        # nothing goes out before the end: the whole document is needed to filter it
        assert flow.response.stream(json.dumps(TOOLS).encode()[:20]) == []
        sent = flow.response.stream(json.dumps(TOOLS).encode()[20:]), flow.response.stream(b"")
    body = b"".join(b"".join(part) if isinstance(part, list) else part for part in sent)
    assert [t["name"] for t in json.loads(body)["result"]["tools"]] == ["read", "refund", "legacy_tool"]
    assert state.decision == "allowed"


def test_a_large_json_tools_list_with_a_length_loses_it_and_is_filtered():
    with taddons.context():
        addons = _addons(RULES)
        document = json.dumps(TOOLS).encode()
        flow, _ = _streaming_list(addons, {"content-type": "application/json",
                                           "content-length": str(len(document))})
        assert "content-length" not in flow.response.headers  # the filtered body is shorter
        body = _streamed(flow, document)
    assert "drop_db" not in body.decode() and '"refund"' in body.decode()


def test_gzip_tools_list_is_decoded_filtered_and_sent_plain():
    with taddons.context():
        addons = _addons(RULES)
        flow, _ = _streaming_list(addons, {"content-type": "application/json", "content-encoding": "gzip"})
        assert "content-encoding" not in flow.response.headers
        body = _streamed(flow, gzip.compress(json.dumps(TOOLS).encode()))
    assert [t["name"] for t in json.loads(body)["result"]["tools"]] == ["read", "refund", "legacy_tool"]


def test_a_tools_list_over_the_limit_fails_closed_with_a_json_rpc_error(monkeypatch):
    monkeypatch.setattr(toolslist, "MAX_TOOLS_LIST_BYTES", 40)
    with taddons.context():
        addons = _addons(RULES)
        flow, state = _streaming_list(addons, {"content-type": "application/json"})
        body = _streamed(flow, json.dumps(TOOLS).encode())
    answer = json.loads(body)
    assert answer["id"] == 2 and "result" not in answer
    assert answer["error"]["code"] == -32007
    assert answer["error"]["data"]["error"] == "tools_list_too_large"
    assert answer["error"]["data"]["limit"] == 40
    assert "40 bytes" in answer["error"]["message"]
    assert state.decision == "blocked" and "40 bytes" in state.reason  # recorded as a refusal


def test_undecodable_tools_list_fails_closed():
    with taddons.context():
        addons = _addons(RULES)
        flow, _ = _streaming_list(addons, {"content-type": "application/json", "content-encoding": "gzip"})
        body = _streamed(flow, b"not gzip at all")
    assert json.loads(body)["error"]["data"]["error"] == "tools_list_unfilterable"


def test_masking_capture_keeps_what_the_filter_sent():
    from addons.core.flowstate import SentBody
    from addons.masking.streamhooks import Captured
    with taddons.context():
        addons = _addons(RULES)
        states, policy, mcp = addons
        flow = mcp_flow(LIST)
        _run(addons, flow)
        flow.response = tflow.tresp(content=b"")
        flow.response.headers.clear()
        flow.response.headers["content-type"] = "application/json"
        sent = SentBody(1 << 20)
        flow.response.stream = Captured(None, sent)
        mcp.streams.responseheaders(flow)
        _streamed(flow, json.dumps(TOOLS).encode())
    assert b"drop_db" not in sent.data and b'"refund"' in sent.data


def test_an_sse_tools_list_event_over_the_limit_fails_closed_and_the_rest_is_dropped(monkeypatch):
    monkeypatch.setattr(toolslist, "MAX_TOOLS_LIST_BYTES", 60)
    from addons.mcp import jsonrpc
    with taddons.context():
        addons = _addons(RULES)
        flow, state = _streaming_list(addons, {"content-type": "text/event-stream"})
        body = _streamed(flow, b": ping\n\n" + jsonrpc.sse_event(TOOLS) + b": after\n\n", chunk=7)
    text = body.decode()
    assert "drop_db" not in text and '"read"' not in text  # the long event is gone, whole
    assert text.startswith(": ping\n\n") and text.endswith(": after\n\n")
    events = [e for e in jsonrpc.sse_events(text) if e.data]
    answer = json.loads(events[0].data)
    assert answer["id"] == 2 and answer["error"]["code"] == -32007
    assert answer["error"]["data"]["limit"] == 60
    assert state.decision == "blocked"


def test_compressed_sse_tools_list_is_buffered_decoded_and_filtered():
    from addons.mcp import jsonrpc
    with taddons.context():
        addons = _addons(RULES)
        flow, _ = _streaming_list(addons, {"content-type": "text/event-stream", "content-encoding": "gzip"})
        assert "content-encoding" not in flow.response.headers
        body = _streamed(flow, gzip.compress(b": ping\n\n" + jsonrpc.sse_event(TOOLS)))
    events = [e for e in jsonrpc.sse_events(body.decode()) if e.data]
    assert [t["name"] for t in json.loads(events[0].data)["result"]["tools"]] == ["read", "refund", "legacy_tool"]


# --- through a real gateway ----------------------------------------------------------


def _tools(count: int, pad: int = 0) -> list[dict]:
    tools = [{"name": "read", "description": "x" * pad}, {"name": "drop_db"}]
    return tools + [{"name": f"tool_{i}", "description": "y" * pad} for i in range(count)]


class _Lists(BaseHTTPRequestHandler):
    """POST /<kind>: a tools/list result, chunked / large with a length / gzip / huge."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        kind = self.path.strip("/")
        pad = {"large": STREAM_ABOVE // 4, "huge": toolslist.MAX_TOOLS_LIST_BYTES // 4}.get(kind, 0)
        body = json.dumps({"jsonrpc": "2.0", "id": request["id"],
                           "result": {"tools": _tools(5, pad)}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if kind == "gzip":
            body = gzip.compress(body)
            self.send_header("content-encoding", "gzip")
        if kind == "large":
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        step = max(64, len(body) // 50)
        for i in range(0, len(body), step):
            part = body[i:i + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Lists)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp-tools-stream")
    rules = root / "rules.yaml"
    rules.write_text("version: 1\ndefault: allow\nrules:\n  - name: no-drops\n"
                     "    match: {mcp: {tool: \"drop_*\"}}\n    action: block\n")
    process = GatewayProcess(rules, root / "conf").start()
    yield process
    process.stop_soon()


def _list(gateway, url: str) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url, data=json.dumps({"jsonrpc": "2.0", "id": 11, "method": "tools/list"}),
                            proxies={"http": gateway.proxy_url}, timeout=30,
                            headers={"content-type": "application/json", "accept": "application/json"})


@pytest.mark.parametrize("kind", ["chunked", "large", "gzip"])
def test_streamed_json_tools_list_loses_the_blocked_tool(gateway, upstream, kind):
    response = _list(gateway, f"{upstream}/{kind}")
    assert response.status_code == 200
    names = [t["name"] for t in response.json()["result"]["tools"]]
    assert "drop_db" not in names
    assert names[:2] == ["read", "tool_0"] and len(names) == 6
    assert response.json()["id"] == 11


def test_streamed_json_tools_list_over_the_limit_is_a_json_rpc_error(gateway, upstream):
    response = _list(gateway, f"{upstream}/huge")
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == 11 and answer["error"]["code"] == -32007
    assert answer["error"]["data"]["limit"] == toolslist.MAX_TOOLS_LIST_BYTES
    assert f"{toolslist.MAX_TOOLS_LIST_BYTES:,} bytes" in answer["error"]["message"]
    assert "drop_db" not in response.text
