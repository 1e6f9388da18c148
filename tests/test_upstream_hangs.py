"""A request the gateway cannot forward never hangs silently (issue 17): on a kept-alive
agent session to a pinned host, an upstream that never answers, one whose TCP connect
never completes, and one that resets all give a JSON 504/502 within the upstream
timeout, are recorded with their error, and leave the session usable."""

from __future__ import annotations

import socket
import struct
import time

import pytest
import requests

from tests.support.hardening import FaultServer, recorded_flows, shared_gateway
from tests.support.upstream import UpstreamServer

TIMEOUT_S = 2
SEEN: dict[str, str] = {}  # flow id -> error kind, checked against the recording at the end


def _never_answers(conn: socket.socket) -> None:
    conn.recv(65536)
    time.sleep(TIMEOUT_S * 4)


def _resets(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close


class NoAccept:
    """A listening socket whose accept queue is full: new connects get no SYN-ACK and hang."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(2):  # Linux queues backlog + 1 connections
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(filler)
        time.sleep(0.2)

    def stop(self) -> None:
        for sock in (*self.fillers, self.sock):
            sock.close()


@pytest.fixture(scope="module")
def servers():
    made = {"silent": FaultServer(_never_answers), "reset": FaultServer(_resets),
            "no-accept": NoAccept(), "healthy": UpstreamServer().start()}
    yield made
    for server in made.values():
        server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir, servers):
    pins = "".join(f"\n          - host: {name}.pinned.test\n            address: 127.0.0.1"
                   for name in servers)
    rules = f"""
        version: 1
        default: allow
        upstreams:{pins}
    """
    directory = tmp_path_factory.mktemp("hangs")
    with shared_gateway(directory, confdir, rules, "--upstream-timeout", str(TIMEOUT_S)) as gw:
        yield gw


@pytest.fixture(scope="module")
def session(gateway):
    with requests.Session() as agent:
        agent.trust_env = False
        agent.proxies = {"http": gateway.proxy_url}
        yield agent


def url(servers, name: str, path: str = "/v1/x") -> str:
    return f"http://{name}.pinned.test:{servers[name].port}{path}"


def check_json_error(response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == kind, body
    assert body["flow_id"] == response.headers["x-portcullis-flow-id"]
    SEEN[body["flow_id"]] = kind


def timed_get(session, target: str) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = session.get(target, timeout=TIMEOUT_S * 5)
    return response, time.monotonic() - started


@pytest.mark.parametrize("upstream", ["silent", "no-accept"])
def test_upstream_that_never_answers_gets_json_504_in_time(session, servers, upstream):
    assert session.get(url(servers, "healthy"), timeout=10).status_code == 200
    response, elapsed = timed_get(session, url(servers, upstream))
    check_json_error(response, 504, "upstream_timeout")
    assert TIMEOUT_S <= elapsed < TIMEOUT_S * 3
    # The agent's kept-alive session still works afterwards.
    assert session.get(url(servers, "healthy", "/after"), timeout=10).status_code == 200


def test_upstream_that_resets_gets_json_502(session, servers):
    response, elapsed = timed_get(session, url(servers, "reset"))
    check_json_error(response, 502, "upstream_closed")
    assert elapsed < TIMEOUT_S
    assert session.get(url(servers, "healthy", "/after-reset"), timeout=10).status_code == 200


def test_every_failed_request_was_recorded_with_its_error(gateway):
    gateway.stop()
    assert "cannot cut" not in gateway.output and "Traceback" not in gateway.output
    assert len(SEEN) == 3
    rows = {row["id"]: row for row in recorded_flows(gateway.db)}
    for flow_id, kind in SEEN.items():
        assert rows[flow_id]["error"] == kind, rows[flow_id]
