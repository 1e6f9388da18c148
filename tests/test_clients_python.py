"""The README's table of clients, Python and curl rows: each configured only by the
environment `portcullis env` prints, through one real gateway for the whole module.

Every client runs in a fresh process with only those variables, as an agent would. For
each: a plain-HTTP call reaches the upstream through the gateway (the gateway's
X-Portcullis-Decision header is on the answer and the upstream saw the request), an
HTTPS call is intercepted with the gateway's CA trusted from the environment alone (no
verify=... in the code), and a blocked call comes back as the gateway's JSON denial.
Also shown, because `portcullis env` says so: aiohttp without trust_env=True and curl
with only upper-case HTTP_PROXY go around the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.server

from gateway.agent_env import agent_environment
from tests.support import certs
from tests.support.gateway import GatewayProcess
from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401
from tests.support.upstream import UpstreamServer

RULES = """\
version: 1
default: allow
upstreams:
  - host: 127.0.0.1
    ca_bundle: {ca}
rules:
  - name: no-admin
    match: {{path: "/admin/**"}}
    action: block
    reason: admin endpoints are off limits
"""


class EchoWebSockets:
    """A WebSocket upstream (the websockets library) on 127.0.0.1, plain and TLS: echoes
    each message with the path it was opened on."""

    def __init__(self, pki: certs.TestPki) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(pki.server_cert, pki.server_key)
        self.ports: dict[str, int] = {}
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(10)

    async def _echo(self, connection: Any) -> None:
        async for message in connection:
            await connection.send(f"{connection.request.path} {message}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            plain = await websockets.asyncio.server.serve(self._echo, "127.0.0.1", 0)
            secure = await websockets.asyncio.server.serve(self._echo, "127.0.0.1", 0, ssl=self.tls)
            self.servers = [plain, secure]
            self.ports = {"ws": plain.sockets[0].getsockname()[1], "wss": secure.sockets[0].getsockname()[1]}
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.ports[scheme]}{path}"

    def stop(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def gateway(module_gateway: Any, pki: certs.TestPki) -> GatewayProcess:
    return module_gateway(RULES.format(ca=pki.ca_cert), "--db", "", "--ui", "off")


@pytest.fixture(scope="module")
def ws_upstream(pki: certs.TestPki) -> Iterator[EchoWebSockets]:
    server = EchoWebSockets(pki)
    yield server
    server.stop()


@pytest.fixture
def agent(gateway: GatewayProcess) -> dict[str, str]:
    """The environment `portcullis env` sets (and nothing else of the kind)."""
    return agent_environment("127.0.0.1", gateway.port, gateway.ca_cert)


def run_client(script: str, env: dict[str, str], *args: str) -> Any:
    """Run a client snippet in a fresh interpreter with only ``env``'s proxy and CA
    variables (as an agent started after `eval "$(portcullis env)"`); its last stdout line
    is JSON. A fresh process matters: aiohttp builds its TLS context at import time."""
    clean = {k: v for k, v in os.environ.items()
             if not k.lower().endswith("_proxy") and k not in agent_environment("h", 1, Path("x"))}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _through_gateway(answer: dict[str, Any], upstream: UpstreamServer, path: str) -> None:
    assert answer["decision"] == "allowed", answer
    assert path in [r.path for r in upstream.received]


def _denial(answer: dict[str, Any]) -> None:
    assert answer["status"] == 403, answer
    denial = json.loads(answer["body"])
    assert (denial["error"], denial["rule"]) == ("blocked_by_policy", "no-admin"), denial


#: Each snippet fetches its argv URLs in order and prints [{status, decision, body}, ...].
REQUESTS = """
    import json, sys, requests
    out = []
    for url in sys.argv[1:]:
        r = requests.get(url, timeout=10)   # HTTP(S)_PROXY, REQUESTS_CA_BUNDLE
        out.append({"status": r.status_code, "decision": r.headers.get("X-Portcullis-Decision"), "body": r.text})
    print(json.dumps(out))
"""
HTTPX_SYNC = """
    import json, sys, httpx
    out = []
    with httpx.Client(timeout=10) as client:   # trust_env=True by default: proxies, SSL_CERT_FILE
        for url in sys.argv[1:]:
            r = client.get(url)
            out.append({"status": r.status_code, "decision": r.headers.get("X-Portcullis-Decision"), "body": r.text})
    print(json.dumps(out))
"""
HTTPX_ASYNC = """
    import asyncio, json, sys, httpx
    async def main():
        async with httpx.AsyncClient(timeout=10) as client:
            return [await client.get(url) for url in sys.argv[1:]]
    print(json.dumps([{"status": r.status_code, "decision": r.headers.get("X-Portcullis-Decision"),
                       "body": r.text} for r in asyncio.run(main())]))
"""
AIOHTTP = """
    import asyncio, json, sys, aiohttp
    TRUST = sys.argv[1] == "trust_env"
    async def main():
        out = []
        async with aiohttp.ClientSession(trust_env=TRUST, timeout=aiohttp.ClientTimeout(total=10)) as session:
            for url in sys.argv[2:]:
                async with session.get(url) as r:
                    out.append({"status": r.status, "decision": r.headers.get("X-Portcullis-Decision"),
                                "body": await r.text()})
        return out
    print(json.dumps(asyncio.run(main())))
"""
AIOHTTP_WS = """
    import asyncio, json, sys, aiohttp
    async def main(url):
        async with aiohttp.ClientSession(trust_env=True) as session:
            try:
                async with session.ws_connect(url, timeout=10) as ws:
                    await ws.send_str("hello")
                    message = await ws.receive(timeout=10)
                    return {"text": message.data, "decision": ws._response.headers.get("X-Portcullis-Decision")}
            except aiohttp.WSServerHandshakeError as exc:
                return {"status": exc.status, "decision": (exc.headers or {}).get("X-Portcullis-Decision")}
    print(json.dumps([asyncio.run(main(url)) for url in sys.argv[1:]]))
"""
URLLIB = """
    import json, sys, urllib.error, urllib.request
    out = []
    for url in sys.argv[1:]:
        try:
            r = urllib.request.urlopen(url, timeout=10)   # proxies from the environment, SSL_CERT_FILE
        except urllib.error.HTTPError as error:
            r = error
        out.append({"status": r.status, "decision": r.headers.get("X-Portcullis-Decision"),
                    "body": r.read().decode()})
    print(json.dumps(out))
"""
WEBSOCKETS = """
    import asyncio, json, sys
    import websockets.asyncio.client, websockets.exceptions
    async def main(url):
        try:   # proxy=True (the default): the proxy variables; TLS: SSL_CERT_FILE
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                await ws.send("hello")
                return {"text": await asyncio.wait_for(ws.recv(), 10),
                        "decision": ws.response.headers.get("X-Portcullis-Decision")}
        except websockets.exceptions.InvalidStatus as exc:
            return {"status": exc.response.status_code, "body": exc.response.body.decode()}
    print(json.dumps([asyncio.run(main(url)) for url in sys.argv[1:]]))
"""


@pytest.mark.parametrize("script", [REQUESTS, HTTPX_SYNC, HTTPX_ASYNC, URLLIB],
                         ids=["requests", "httpx-sync", "httpx-async", "urllib"])
def test_python_http_client(script: str, agent: dict, upstream: UpstreamServer,
                            tls_upstream: UpstreamServer) -> None:
    plain, secure, blocked = run_client(script, agent, upstream.url("/p/plain"), tls_upstream.url("/p/tls"),
                                        upstream.url("/admin/users"))
    _through_gateway(plain, upstream, "/p/plain")
    _through_gateway(secure, tls_upstream, "/p/tls")  # the gateway's CA, trusted from the environment
    _denial(blocked)
    assert "/admin/users" not in [r.path for r in upstream.received]


def test_aiohttp_with_trust_env(agent: dict, upstream: UpstreamServer, tls_upstream: UpstreamServer) -> None:
    plain, secure, blocked = run_client(AIOHTTP, agent, "trust_env", upstream.url("/a/plain"),
                                        tls_upstream.url("/a/tls"), upstream.url("/admin/users"))
    _through_gateway(plain, upstream, "/a/plain")
    _through_gateway(secure, tls_upstream, "/a/tls")
    _denial(blocked)


def test_aiohttp_without_trust_env_goes_around_the_gateway(agent: dict, upstream: UpstreamServer) -> None:
    (direct,) = run_client(AIOHTTP, agent, "default", upstream.url("/a/direct"))
    assert direct["status"] == 200 and direct["decision"] is None  # why `portcullis env` names trust_env=True


def test_aiohttp_websocket_through_wss_proxy(agent: dict, ws_upstream: EchoWebSockets) -> None:
    secure, plain = run_client(AIOHTTP_WS, agent, ws_upstream.url("wss", "/feed/wss"),
                               ws_upstream.url("ws", "/feed/ws"))
    assert secure == {"text": "/feed/wss hello", "decision": "allowed"}  # WSS_PROXY, then CONNECT
    # aiohttp sends plain ws:// to a proxy as `GET ws://host/...`, a target form HTTP proxies
    # do not take: the gateway answers its JSON 400, and nothing reaches the upstream.
    assert plain == {"status": 400, "decision": "error"}


def test_websockets(agent: dict, ws_upstream: EchoWebSockets) -> None:
    plain, secure, blocked = run_client(WEBSOCKETS, agent, ws_upstream.url("ws", "/live/ws"),
                                        ws_upstream.url("wss", "/live/wss"), ws_upstream.url("ws", "/admin/socket"))
    assert plain == {"text": "/live/ws hello", "decision": "allowed"}
    assert secure == {"text": "/live/wss hello", "decision": "allowed"}
    _denial(blocked)


# --- curl, HTTP/1.1 and HTTP/2 ---------------------------------------------------------------

def _curl(*args: str, env: dict[str, str]) -> tuple[str, dict[str, str], str]:
    """curl with only `portcullis env`'s variables; returns the HTTP version, headers, body."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (.ci/run installs it)")
    done = subprocess.run(["curl", "-sS", "-D", "-", "-w", "\n%{http_version}", *args],
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **env})
    assert done.returncode == 0, done.stderr
    text, _, version = done.stdout.rpartition("\n")
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    while body.startswith("HTTP/"):  # the proxy's answer to CONNECT came first
        head, _, body = body.partition("\n\n")
    headers = {}
    for line in head.split("\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return version.strip(), headers, body


@pytest.mark.parametrize("version_flag, expected", [("--http1.1", "1.1"), ("--http2", "2")])
def test_curl(agent: dict, upstream: UpstreamServer, tls_upstream: UpstreamServer, version_flag: str,
              expected: str) -> None:
    # Plain HTTP through a proxy is always HTTP/1.1; the HTTPS leg negotiates h2 (ALPN) with
    # the gateway, which speaks HTTP/1.1 to this upstream.
    version, headers, _ = _curl(version_flag, upstream.url("/c/plain"), env=agent)
    assert version == "1.1" and headers["x-portcullis-decision"] == "allowed"
    version, headers, _ = _curl(version_flag, tls_upstream.url("/c/tls"), env=agent)  # CURL_CA_BUNDLE
    assert version == expected
    assert headers["x-portcullis-decision"] == "allowed"
    version, headers, body = _curl(version_flag, tls_upstream.url("/admin/users"), env=agent)
    assert version == expected
    _denial({"status": 403, "body": body})
    assert [r.path for r in upstream.received] == ["/c/plain"]
    assert [r.path for r in tls_upstream.received] == ["/c/tls"]


def test_curl_ignores_upper_case_http_proxy(agent: dict, upstream: UpstreamServer) -> None:
    """Why `portcullis env` exports the lower-case names too."""
    upper_only = {k: v for k, v in agent.items() if k not in ("http_proxy", "https_proxy")}
    _, headers, _ = _curl(upstream.url("/c/direct"), env=upper_only)
    assert "x-portcullis-decision" not in headers


def test_every_variable_portcullis_env_prints_is_used_by_a_client_row(agent: dict) -> None:
    used = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "WSS_PROXY", "WS_PROXY",
            "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE",
            # Node's (tests/test_clients_node.py) and boto's (botocore reads it like curl's).
            "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY", "AWS_CA_BUNDLE"}
    assert set(agent) <= used, set(agent) - used
    assert Path(agent["SSL_CERT_FILE"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
