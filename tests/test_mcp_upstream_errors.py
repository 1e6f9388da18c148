"""Upstream failures reach an MCP client as JSON-RPC errors (code -32006, the request's
id(s), data with error, reason and flow_id), not as a plain JSON 502/504 its SDK cannot
read: mitmproxy's error pages (addons/upstreams/errorpages.py) ask the denial-shape seam
(addons.core.replies.error_shape) for the flow's shape.

In process for the rendering; through one real gateway for unreachable, closed and
timed-out MCP servers; and with real mcp SDK clients (1.x and 2.x, their own
virtualenvs) whose server goes away mid-session and comes back: the call fails with a
readable error and the same session goes on.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from mitmproxy.test import taddons, tflow

from addons.upstreams import errorpages
from tests.support import sdk_venv
from tests.support.gateway import GatewayProcess, free_port
from tests.test_mcp_engine import RULES, _addons, call, mcp_flow
from tests.test_mcp_sdk import _wait_ready

UNREACHABLE = "Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 9)"


def _registered(body):
    """A flow the MCP addon has seen (so its shape is chosen), kept alive by the caller."""
    addons = _addons(RULES)
    flow = mcp_flow(body)
    addons[2].request(flow)
    return flow


def test_error_page_of_a_json_rpc_request_is_a_json_rpc_error_with_its_id():
    with taddons.context():
        flow = _registered(call(7, "read", a=1))
        status, payload, headers = errorpages.render(502, UNREACHABLE, "upstream_unreachable", flow.id)
    answer = json.loads(payload)
    assert status == 200  # an MCP SDK 1.x transport turns a 5xx into an exception
    assert answer["jsonrpc"] == "2.0" and answer["id"] == 7
    assert answer["error"]["code"] == -32006
    assert answer["error"]["data"] == {"error": "upstream_unreachable", "reason": UNREACHABLE,
                                       "detail": UNREACHABLE, "flow_id": flow.id}
    assert answer["error"]["message"].startswith(UNREACHABLE + " (Portcullis upstream_unreachable: flow ")
    assert (b"x-portcullis-decision", b"error") in headers
    assert (b"content-type", b"application/json") in headers


def test_error_page_of_a_batch_has_an_error_per_id_and_timeouts_say_so():
    with taddons.context():
        flow = _registered([call(1, "read"), {"jsonrpc": "2.0", "method": "notifications/x"}, call("b", "read")])
        status, payload, _ = errorpages.render(502, "timed out", "upstream_timeout", flow.id)
    answers = json.loads(payload)
    assert status == 200
    assert [(a["id"], a["error"]["code"], a["error"]["data"]["error"]) for a in answers] == [
        (1, -32006, "upstream_timeout"), ("b", -32006, "upstream_timeout")]
    assert "portcullis_upstream_timeout" in answers[0]["error"]["data"]["reason"]


def test_tool_result_rules_do_not_turn_an_upstream_failure_into_a_failed_tool():
    with taddons.context():
        addons = _addons(RULES)
        flow = mcp_flow(call(9, "refund", amount=1000))  # big-refunds: deny_as tool_result
        addons[2].request(flow)
        addons[1].request(flow)
        status, payload, _ = errorpages.render(502, "server disconnected", "upstream_closed", flow.id)
    assert json.loads(payload)["error"]["code"] == -32006


def test_other_flows_keep_the_gateways_json():
    with taddons.context():
        plain = tflow.tflow()
        notification = _registered({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for flow in (plain, notification):
            status, payload, _ = errorpages.render(502, UNREACHABLE, "upstream_unreachable", flow.id)
            assert status == 502
            assert json.loads(payload)["error"] == "upstream_unreachable"
    status, payload, _ = errorpages.render(502, UNREACHABLE, "upstream_unreachable", None)
    assert (status, json.loads(payload)["error"]) == (502, "upstream_unreachable")


# --- through a real gateway ----------------------------------------------------------


class _Misbehaving:
    """127.0.0.1 servers that accept and then close at once ("closed"), or hold the
    connection without answering ("silent"); bounded by the fixture."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            if self.kind == "closed":
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def upstreams():
    servers = {kind: _Misbehaving(kind) for kind in ("closed", "silent")}
    unreachable = free_port()  # nothing listens there
    yield {"unreachable": f"http://127.0.0.1:{unreachable}/mcp",
           **{kind: f"http://127.0.0.1:{s.port}/mcp" for kind, s in servers.items()}}
    for server in servers.values():
        server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp-upstream-errors")
    rules = root / "rules.yaml"
    rules.write_text("version: 1\ndefault: allow\nrules: []\n")
    process = GatewayProcess(rules, root / "conf", ["--upstream-timeout", "1"]).start()
    yield process
    process.stop_soon()


def _post(gateway, url: str, body) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url, data=json.dumps(body), proxies={"http": gateway.proxy_url}, timeout=20,
                            headers={"content-type": "application/json",
                                     "accept": "application/json, text/event-stream"})


@pytest.mark.parametrize("kind,error", [("unreachable", "upstream_unreachable"),
                                        ("closed", "upstream_closed"), ("silent", "upstream_timeout")])
def test_failing_mcp_server_gives_a_json_rpc_error(gateway, upstreams, kind, error):
    response = _post(gateway, upstreams[kind], call(31, "read_note", name="a"))
    assert response.status_code == 200
    assert response.headers["X-Portcullis-Decision"] == "error"
    answer = response.json()
    assert answer["id"] == 31 and answer["error"]["code"] == -32006
    data = answer["error"]["data"]
    assert data["error"] == error
    assert data["flow_id"] == response.headers["X-Portcullis-Flow-Id"]
    assert data["reason"] and data["reason"] in answer["error"]["message"]
    # a request that is not JSON-RPC keeps the gateway's JSON and status
    plain = _post(gateway, upstreams[kind], {"hello": "world"})
    assert plain.status_code in (502, 504) and plain.json()["error"] == error


# --- real SDK clients whose server goes away and comes back ----------------------------

#: argv: url, directory. Initialises a session, calls read_note, then for each phase
#: writes <dir>/at-<n> and waits for <dir>/go-<n> (bounded) before its next call.
SDK_CLIENT = r'''
import asyncio, json, os, sys, time
import importlib.metadata as md
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
try:
    import httpx2 as httpx
except ImportError:
    import httpx
url, directory = sys.argv[1], sys.argv[2]

async def phase(n):
    open(os.path.join(directory, f"at-{n}"), "w").close()
    for _ in range(1200):
        if os.path.exists(os.path.join(directory, f"go-{n}")):
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"no go-{n}")

async def attempt(session, name):
    try:
        result = await session.call_tool("read_note", {"name": name})
        return {"text": " ".join(getattr(c, "text", "") for c in result.content)}
    except Exception as exc:
        return {"exception": type(exc).__name__, "message": str(exc),
                "code": getattr(getattr(exc, "error", None), "code", None)}

async def main():
    out = []
    client = httpx.AsyncClient(proxy=os.environ["PORTCULLIS_TEST_PROXY"], timeout=httpx.Timeout(30))
    async with client, streamable_http_client(url, http_client=client) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            out.append(await attempt(session, "before"))
            await phase(1)  # the server is stopped
            out.append(await attempt(session, "while-down"))
            await phase(2)  # the server is back
            out.append(await attempt(session, "after"))
    print(json.dumps({"version": md.version("mcp"), "steps": out}))

asyncio.run(main())
'''


def _start_server(port: int):
    process = sdk_venv.spawn("mcp2", sdk_venv.MCP_SERVER, str(port), "sse", "stateless")
    _wait_ready(process, port)
    return process


def _wait_file(path, client, timeout: float = 90) -> None:
    """Until the client reaches a phase (it writes ``path``); a client that ended (its
    session died) fails the test at once with its output."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if client.done():
            raise AssertionError(f"the client ended before {path.name}: {client.result()}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("major", ["mcp1", "mcp2"])
def test_sdk_session_survives_its_server_going_away(gateway, tmp_path, major):
    sdk_venv.ensure(major)
    port = free_port()
    server = _start_server(port)
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(sdk_venv.run_json, major, SDK_CLIENT, f"http://127.0.0.1:{port}/mcp",
                                 str(tmp_path), gateway=gateway, timeout=180)
            _wait_file(tmp_path / "at-1", future)
            server.terminate()
            server.wait(10)
            (tmp_path / "go-1").touch()
            _wait_file(tmp_path / "at-2", future)
            server = _start_server(port)
            (tmp_path / "go-2").touch()
            report = future.result()
    finally:
        server.terminate()
        server.wait(10)
    before, down, after = report["steps"]
    assert report["version"].startswith("1." if major == "mcp1" else "2.")
    assert before["text"] == "note before: hello"
    assert down["exception"] in ("McpError", "MCPError"), down  # an error of the call, readable
    assert down["code"] == -32006
    assert "Portcullis upstream_" in down["message"] and "flow " in down["message"]
    assert after["text"] == "note after: hello"  # the same session goes on
