"""The README's SDK rows: the openai, anthropic and mcp (1.x and 2.x) Python SDKs through one
real gateway, configured only by the environment `portcullis env` prints: no proxy=, no
http_client=, no verify= in the client code.

The SDKs run from their own virtualenvs (tests/support/sdk_venv.py: they need an h11 the
gateway's mitmproxy 11 cannot have beside it). openai and anthropic call a local fake API
over HTTPS, so the gateway's CA must come from SSL_CERT_FILE; the mcp clients use the
SDK's default Streamable HTTP transport against a real FastMCP server. (What the SDKs make
of denials is tests/test_sdk_denials.py and tests/test_mcp_sdk.py.)
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support import certs, sdk_venv
from tests.support.gateway import GatewayProcess, free_port

RULES = """\
version: 1
default: allow
upstreams:
  - host: 127.0.0.1
    ca_bundle: {ca}
rules:
  - name: no-drops
    match: {{mcp: {{tool: "drop_*"}}}}
    action: block
    reason: Agents may not drop databases
"""

COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-ok",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-small",
           "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 1, "output_tokens": 1}}


class FakeApi(BaseHTTPRequestHandler):
    """OpenAI's /v1/chat/completions and Anthropic's /v1/messages, over TLS."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        FakeApi.seen.append((self.path, self.headers.get("X-Portcullis-Flow-Id")))
        data = json.dumps(COMPLETION if self.path.startswith("/v1/chat") else MESSAGE | {"model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fake_api(pki: certs.TestPki) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def gateway(module_gateway: Any, pki: certs.TestPki) -> GatewayProcess:
    return module_gateway(RULES.format(ca=pki.ca_cert), "--db", "", "--ui", "off")


LLM_CLIENTS = r'''
import json, sys
import anthropic, openai
base = sys.argv[1]
out = {}
def report(name, call):
    try:
        out[name] = {"ok": True, "result": call()}
    except Exception as e:
        out[name] = {"exception": type(e).__name__, "message": str(e)[:300]}
o = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
report("openai", lambda: o.chat.completions.create(model="gpt-ok", messages=[{"role": "user", "content": "x"}]
                                                   ).choices[0].message.content)
a = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
report("anthropic", lambda: a.messages.create(model="claude-small", max_tokens=5,
                                              messages=[{"role": "user", "content": "x"}]).content[0].text)
print(json.dumps(out))
'''


def test_openai_and_anthropic_sdks_over_https(gateway: GatewayProcess, fake_api: str) -> None:
    FakeApi.seen.clear()
    out = sdk_venv.run_json("llm", LLM_CLIENTS, fake_api, gateway=gateway, timeout=120)
    assert out == {"openai": {"ok": True, "result": "hi"}, "anthropic": {"ok": True, "result": "hi"}}, out
    # Both went through the gateway (it intercepted the TLS and the rules saw the request).
    assert [path for path, _ in FakeApi.seen] == ["/v1/chat/completions", "/v1/messages"]


#: The SDK's default transport: streamable_http_client(url) / streamablehttp_client(url)
#: builds its own HTTP client, which reads the proxy variables.
MCP_DEFAULT_CLIENT = r'''
import asyncio, json, sys
from mcp import ClientSession
try:
    from mcp.client.streamable_http import streamable_http_client as connect
except ImportError:
    from mcp.client.streamable_http import streamablehttp_client as connect
async def main(url):
    out = {}
    async with connect(url) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
            result = await session.call_tool("read_note", {"name": "a"})
            out["read"] = [c.text for c in result.content]
            try:
                denied = await session.call_tool("drop_database", {"name": "prod"})
                out["drop"] = {"is_error": denied.isError, "text": [getattr(c, "text", "") for c in denied.content]}
            except Exception as e:  # the JSON-RPC error the gateway answers
                out["drop"] = {"exception": type(e).__name__, "message": str(e)}
            out["after"] = [c.text for c in (await session.call_tool("read_note", {"name": "b"})).content]
    return out
try:
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
except BaseException as e:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    print(json.dumps({"exception": type(e).__name__, "message": str(e)[:300]}))
'''


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[str]:
    port = free_port()
    process = sdk_venv.spawn("mcp2", sdk_venv.MCP_SERVER, str(port), "json")
    try:
        assert process.stdout is not None and "ready" in process.stdout.readline()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the MCP server did not listen"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("major", ["mcp1", "mcp2"])
def test_mcp_sdk_default_transport(gateway: GatewayProcess, mcp_server: str, major: str) -> None:
    out = sdk_venv.run_json(major, MCP_DEFAULT_CLIENT, mcp_server, gateway=gateway, timeout=120)
    assert out.get("tools") == ["call_log", "delete_note", "read_note"], out  # drop_* filtered: the gateway
    assert out["read"] == ["note a: hello"]
    assert out["drop"]["exception"] in ("McpError", "MCPError"), out
    assert "Agents may not drop databases" in out["drop"]["message"] and "no-drops" in out["drop"]["message"]
    assert out["after"] == ["note b: hello"]  # the session survived the denial
