"""A request the gateway cannot forward never hangs silently (issue 17): on a kept-alive
agent session to a pinned host, an upstream that never answers, one whose TCP connect
never completes, and one that resets all give a JSON 504/502 within the upstream
timeout, are recorded with their error, and leave the session usable; so do an HTTP/2
agent's streams that wait for one of mitmproxy's upstream connection slots."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import time

import pytest
import requests

from tests.support.hardening import FaultServer, recorded_flows, shared_gateway
from tests.support.upstream import UpstreamServer

TIMEOUT_S = 2
#: How late past the timeout a stream that waited for a connection slot may be answered.
SLOT_SLACK_S = 1.0
SEEN: dict[str, str] = {}  # flow id -> error kind, checked against the recording at the end
STALLED: set[str] = set()  # streams cut mid-way, recorded as timed out
#: A streamed response's events: together longer than the timeout, each gap well inside it.
TRICKLE_EVENTS, TRICKLE_GAP_S = 5, TIMEOUT_S * 0.35
TIMED_OUT_H2: set[str] = set()  # flow ids the HTTP/2 agent was told timed out


def _never_answers(conn: socket.socket) -> None:
    conn.recv(65536)
    time.sleep(TIMEOUT_S * 4)


def _resets(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close


def _stream_head(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n")


def _event(conn: socket.socket, data: str) -> None:
    payload = f"data: {data}\n\n".encode()
    conn.sendall(b"%x\r\n%s\r\n" % (len(payload), payload))


def _trickles(conn: socket.socket) -> None:
    _stream_head(conn)
    for index in range(TRICKLE_EVENTS):
        _event(conn, str(index))
        time.sleep(TRICKLE_GAP_S)
    conn.sendall(b"0\r\n\r\n")


def _stalls_mid_stream(conn: socket.socket) -> None:
    _stream_head(conn)
    _event(conn, "first")
    time.sleep(TIMEOUT_S * 4)


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


def _tls_never_answers(context: ssl.SSLContext):
    def behaviour(conn: socket.socket) -> None:
        _never_answers(context.wrap_socket(conn, server_side=True))
    return behaviour


@pytest.fixture(scope="module")
def servers(pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    made = {"silent": FaultServer(_never_answers), "reset": FaultServer(_resets),
            "no-accept": NoAccept(), "healthy": UpstreamServer().start(),
            "tls-silent": FaultServer(_tls_never_answers(context)),
            "trickle": FaultServer(_trickles), "stalls": FaultServer(_stalls_mid_stream)}
    yield made
    for server in made.values():
        server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir, servers):
    pins = "".join(f"\n          - host: {name}.pinned.test\n            address: 127.0.0.1"
                   f"\n            verify: false" for name in servers)
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


def test_http2_streams_waiting_for_a_connection_slot_still_time_out(gateway, servers, tmp_path):
    # An HTTP/2 agent's concurrent streams to an HTTP/1 upstream each need their own
    # upstream connection, and mitmproxy opens five at a time per address: streams six
    # and seven wait for a slot, and must get their JSON 504 too rather than be lost,
    # within the timeout like the others (not a second timeout later).
    target = f"https://tls-silent.pinned.test:{servers['tls-silent'].port}"
    bodies = [tmp_path / f"s{i}.json" for i in range(7)]
    urls = [arg for i, body in enumerate(bodies) for arg in ("-o", str(body), f"{target}/s{i}")]
    started = time.monotonic()
    result = subprocess.run(
        ["curl", "-s", "--http2", "--parallel", "--parallel-max", "10",
         "-x", gateway.proxy_url, "--cacert", str(gateway.ca_cert), "--max-time", str(TIMEOUT_S * 8),
         "-w", "%{http_version} %{http_code} %{time_total}\n", *urls],
        capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - started
    lines = [line.rsplit(" ", 1) for line in result.stdout.split("\n")[:-1]]
    assert [status for status, _ in lines] == ["2 504"] * 7, result.stdout + result.stderr
    times = sorted(float(seconds) for _, seconds in lines)
    assert times[-1] < TIMEOUT_S + SLOT_SLACK_S, times  # the slowest stream too: one timeout
    assert elapsed < TIMEOUT_S + SLOT_SLACK_S + 1
    answers = [json.loads(body.read_text()) for body in bodies]
    assert {answer["error"] for answer in answers} == {"upstream_timeout"}
    TIMED_OUT_H2.update(answer["flow_id"] for answer in answers)
    assert len(TIMED_OUT_H2) == 7  # each stream's answer names its own flow


def test_a_stream_that_keeps_sending_outlives_the_timeout(session, servers):
    # An LLM generating for longer than the upstream timeout is not hung: a streamed
    # response has the timeout between chunks, not for the whole body.
    started = time.monotonic()
    with session.get(url(servers, "trickle"), stream=True, timeout=TIMEOUT_S * 5) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert events == [f"data: {i}".encode() for i in range(TRICKLE_EVENTS)]
    assert time.monotonic() - started > TIMEOUT_S  # it did run past the timeout


def test_a_stream_that_stops_sending_is_cut_after_the_timeout(session, servers):
    started = time.monotonic()
    with session.get(url(servers, "stalls"), stream=True, timeout=TIMEOUT_S * 5) as response:
        assert response.status_code == 200
        flow_id = response.headers["x-portcullis-flow-id"]
        lines = response.iter_lines()
        assert next(lines) == b"data: first"
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            list(lines)
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S * 2.5
    STALLED.add(flow_id)


def test_every_failed_request_was_recorded_with_its_error(gateway):
    gateway.stop()
    assert "cannot cut" not in gateway.output and "Traceback" not in gateway.output
    assert len(SEEN) == 3
    timed_out = recorded_flows(gateway.db, "host = 'tls-silent.pinned.test'")
    assert {row["id"]: row["error"] for row in timed_out} == dict.fromkeys(TIMED_OUT_H2, "upstream_timeout")
    rows = {row["id"]: row for row in recorded_flows(gateway.db)}
    for flow_id, kind in SEEN.items():
        assert rows[flow_id]["error"] == kind, rows[flow_id]
    assert len(STALLED) == 1
    for flow_id in STALLED:
        assert rows[flow_id]["error"] == "upstream_timeout", rows[flow_id]
