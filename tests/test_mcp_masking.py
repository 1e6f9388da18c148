"""Masks inside MCP tool results, with the real SDK (issue 14).

A real FastMCP server (mcp 2.3.0, Streamable HTTP, in JSON and in SSE response mode) has
a tool that returns a customer record: the SDK sends it as JSON text in
``result.content[0].text`` and again as ``structuredContent``, after a progress
notification that names the customer's e-mail address. Real SDK clients (2.x on both
modes, 1.x on SSE) call it through one real gateway whose rule masks ``$..ssn`` and
detects e-mail addresses; the servers and clients run in their own virtualenvs
(tests/support/sdk_venv.py); both servers run in one process.

* the SSN is masked inside the JSON text (which stays indented JSON) and in
  structuredContent, the e-mail address in all three places;
* on the SSE response the progress notification reaches the client while the tool is
  still running (masked message by message, not buffered to the end);
* the recording holds no SSN and no address.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from recordings.control import ask
from tests.support import sdk_venv
from tests.support.gateway import GatewayProcess, free_port

RULES = """
version: 1
default: allow
rules:
  - name: mask-crm
    match: {path: "/mcp"}
    mask:
      - "$..ssn"
      - {detect: [email]}
"""
TOOL_SECONDS = 0.8

SERVER = r'''
import asyncio, contextlib, sys
from typing import TypedDict
import uvicorn
pause = float(sys.argv[1])
try:
    from mcp.server.mcpserver import MCPServer as Server, Context
    major = 2
except ImportError:
    from mcp.server.fastmcp import FastMCP as Server, Context
    major = 1

class Customer(TypedDict):
    id: str
    name: str
    ssn: str
    email: str

def crm_app(port, mode):
    if major == 2:
        server = Server("crm")
    else:
        server = Server("crm", json_response=mode == "json", host="127.0.0.1", port=port)

    @server.tool()
    async def lookup_customer(id: str, ctx: Context) -> Customer:
        """A customer record."""
        await ctx.report_progress(1, 2, "customer zoe@example.com found")
        await asyncio.sleep(pause)
        return {"id": id, "name": "Zoë", "ssn": "123-45-6789", "email": "zoe@example.com"}

    return server.streamable_http_app(json_response=mode == "json") if major == 2 else server.streamable_http_app()

class Quiet(uvicorn.Server):  # one process serves every mode: SIGTERM ends it at once
    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self):
        pass

async def main(specs):
    servers = []
    for spec in specs:  # PORT:MODE
        port, mode = spec.split(":")
        servers.append(Quiet(uvicorn.Config(crm_app(int(port), mode), host="127.0.0.1", port=int(port),
                                            log_level="warning")))
    print("ready", flush=True)
    await asyncio.gather(*(server.serve() for server in servers))

asyncio.run(main(sys.argv[2:]))
'''

CLIENT = r'''
import asyncio, json, os, sys, time
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
try:
    import httpx2 as httpx
except ImportError:
    import httpx

async def call(url):
    client = httpx.AsyncClient(proxy=os.environ["PORTCULLIS_TEST_PROXY"], timeout=30)
    progress = []
    async with client, streamable_http_client(url, http_client=client) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            started = time.monotonic()

            async def on_progress(done, total, message):
                progress.append({"message": message, "at": time.monotonic() - started})

            result = await session.call_tool("lookup_customer", {"id": "c1"}, progress_callback=on_progress)
            finished = time.monotonic() - started
    structured = getattr(result, "structuredContent", None) or getattr(result, "structured_content", None)
    return {"texts": [c.text for c in result.content], "structured": structured,
            "progress": progress, "finished": finished}

async def main(urls):  # one session per URL, at once
    return await asyncio.gather(*(call(url) for url in urls))

print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
'''


@pytest.fixture(scope="module")
def servers():
    """mode -> URL: the CRM server in JSON and in SSE response mode, both in one process."""
    ports = {mode: free_port() for mode in ("json", "sse")}
    process = sdk_venv.spawn("mcp2", SERVER, str(TOOL_SECONDS), *(f"{port}:{mode}" for mode, port in ports.items()))
    try:
        sdk_venv.wait_listening(process, list(ports.values()))
        yield {mode: f"http://127.0.0.1:{port}/mcp" for mode, port in ports.items()}
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    rules = tmp_path_factory.mktemp("mcp-masking") / "rules.yaml"
    rules.write_text(RULES)
    process = GatewayProcess(rules, confdir).start()
    yield process
    process.stop_soon()  # nothing reads it after: its exit is awaited later (reap)


CASES = [("mcp2", "json"), ("mcp2", "sse"), ("mcp1", "sse")]


@pytest.fixture(scope="module")
def results(servers, gateway):
    """case -> the client's result: one client process per major, its cases' sessions at once."""
    majors = sorted({major for major, _ in CASES})
    for name in majors:
        sdk_venv.ensure(name)
    with ThreadPoolExecutor(len(majors)) as pool:
        futures = {major: pool.submit(sdk_venv.run_json, major, CLIENT,
                                      json.dumps([servers[mode] for m, mode in CASES if m == major]),
                                      gateway=gateway, timeout=90) for major in majors}
        return {case: result for major, future in futures.items()
                for case, result in zip([c for c in CASES if c[0] == major], future.result(), strict=True)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_json_text_and_structured_content_of_a_tool_result_are_masked(results, case):
    seen = results[case]
    text = seen["texts"][0]
    assert json.loads(text) == {"id": "c1", "name": "Zoë", "ssn": "[masked]", "email": "[masked:email]"}
    assert text.startswith("{\n  ")  # still the server's layout
    assert seen["structured"]["ssn"] == "[masked]" and seen["structured"]["email"] == "[masked:email]"
    # A JSON response carries the result alone; an SSE response the progress notification too.
    expected = ["customer [masked:email] found"] if case[1] == "sse" else []
    assert [p["message"] for p in seen["progress"]] == expected


@pytest.mark.parametrize("case", [c for c in CASES if c[1] == "sse"], ids=lambda c: f"{c[0]}-{c[1]}")
def test_an_sse_response_is_masked_message_by_message_as_it_streams(results, case):
    seen = results[case]
    assert seen["progress"][0]["at"] < seen["finished"] - TOOL_SECONDS / 2, seen


def test_the_recording_holds_no_masked_value(results, gateway):
    # The recorder commits in the background: wait until every case's result is in.
    deadline = time.monotonic() + 10
    while (masked := ask(gateway.db, "/query", {"sql": "SELECT count(*) FROM flows WHERE response_body LIKE "
                                                        "'%structuredContent%[masked]%'"})["rows"][0][0]) < len(CASES):
        assert time.monotonic() < deadline, f"{masked} of {len(CASES)} masked results recorded"
        time.sleep(0.05)
    query = ("SELECT count(*) FROM flows WHERE response_body LIKE '%6789%' "
             "OR response_body LIKE '%zoe@example.com%'")
    assert ask(gateway.db, "/query", {"sql": query})["rows"] == [[0]]
