"""Upstream faults: the agent gets a JSON 502/504 naming the fault (never mitmproxy's HTML
page), the flow is recorded with its error, and the gateway keeps serving."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

import pytest
import requests

from tests.support.hardening import FaultServer, recorded_flows, shared_gateway
from tests.support.module_servers import tls_server
from tests.support.upstream import UpstreamServer

TIMEOUT_S = 2
RULES = """
    version: 1
    default: allow
"""


def _request_then(reply: bytes, reset: bool = False):
    def behaviour(conn: socket.socket) -> None:
        conn.recv(65536)
        if reply:
            conn.sendall(reply)
        if reset:  # RST instead of FIN
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return behaviour


def _hang(conn: socket.socket) -> None:
    conn.recv(65536)
    time.sleep(TIMEOUT_S * 4)


@pytest.fixture(scope="module")
def faults():
    servers = {
        "reset mid-response": FaultServer(_request_then(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial", reset=True)),
        "closed before answering": FaultServer(_request_then(b"")),
        "not HTTP": FaultServer(_request_then(b"SSH-2.0-OpenSSH\r\n\r\n")),
        "hangs": FaultServer(_hang),
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def untrusted_tls(pki):
    server = tls_server(pki)  # signed by the tests' CA, which this gateway is NOT told to trust
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    directory = tmp_path_factory.mktemp("faults")
    with shared_gateway(directory, confdir, RULES, "--upstream-timeout", str(TIMEOUT_S)) as gw:
        yield gw


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def via(gateway) -> dict[str, str]:
    return {"http": gateway.proxy_url, "https": gateway.proxy_url}


def check_json_error(response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == kind, body
    assert body["flow_id"] == response.headers["x-portcullis-flow-id"]
    return body["flow_id"]


SEEN: dict[str, str] = {}  # flow id -> error kind, checked against the recording at the end


@pytest.mark.parametrize(("fault", "kind"), [
    ("reset mid-response", "upstream_closed"),
    ("closed before answering", "upstream_closed"),
    ("not HTTP", "upstream_protocol_error"),
])
def test_broken_upstreams_give_json_502(gateway, faults, fault, kind):
    url = f"http://127.0.0.1:{faults[fault].port}/v1/x"
    response = requests.get(url, proxies=via(gateway), timeout=30)
    SEEN[check_json_error(response, 502, kind)] = kind


def test_refused_and_unresolvable_upstreams_are_unreachable(gateway):
    for url in (f"http://127.0.0.1:{closed_port()}/", "http://no-such-host.invalid/"):
        response = requests.get(url, proxies=via(gateway), timeout=30)
        SEEN[check_json_error(response, 502, "upstream_unreachable")] = "upstream_unreachable"


def test_hanging_upstream_times_out_with_504(gateway, faults):
    started = time.monotonic()
    response = requests.get(f"http://127.0.0.1:{faults['hangs'].port}/slow", proxies=via(gateway), timeout=30)
    elapsed = time.monotonic() - started
    SEEN[check_json_error(response, 504, "upstream_timeout")] = "upstream_timeout"
    assert TIMEOUT_S <= elapsed < TIMEOUT_S * 4


def test_https_faults_are_json_inside_the_tunnel(gateway, faults, untrusted_tls):
    kwargs = {"proxies": via(gateway), "verify": str(gateway.ca_cert), "timeout": 30}
    response = requests.get(f"https://127.0.0.1:{untrusted_tls.port}/", **kwargs)
    SEEN[check_json_error(response, 502, "upstream_tls_error")] = "upstream_tls_error"
    assert untrusted_tls.received == []
    # A server that does not speak TLS at all.
    response = requests.get(f"https://127.0.0.1:{faults['not HTTP'].port}/", **kwargs)
    SEEN[check_json_error(response, 502, "upstream_tls_error")] = "upstream_tls_error"
    response = requests.get(f"https://127.0.0.1:{closed_port()}/", **kwargs)
    SEEN[check_json_error(response, 502, "upstream_unreachable")] = "upstream_unreachable"


def test_http2_agents_get_json_errors_too(gateway):
    # curl negotiates HTTP/2 inside the CONNECT tunnel (httpx does not through a proxy).
    result = subprocess.run(
        ["curl", "-s", "--http2", "-x", gateway.proxy_url, "--cacert", str(gateway.ca_cert),
         "-w", "\n%{http_version} %{http_code} %{content_type}", f"https://127.0.0.1:{closed_port()}/"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    body, _, summary = result.stdout.rpartition("\n")
    assert summary == "2 502 application/json"
    assert json.loads(body)["error"] == "upstream_unreachable"


def test_gateway_keeps_serving_and_recorded_every_fault(gateway):
    healthy = UpstreamServer().start()
    try:
        assert requests.get(healthy.url("/ok"), proxies=via(gateway), timeout=10).status_code == 200
    finally:
        healthy.stop()
    assert "Traceback" not in gateway.output
    gateway.stop()
    assert len(SEEN) >= 8
    rows = {row["id"]: row for row in recorded_flows(gateway.db)}
    for flow_id, kind in SEEN.items():
        assert rows[flow_id]["error"] == kind, rows[flow_id]
