"""Stalled and idle agent connections are closed (issue 12, medium: resource limits).

The gateway runs with short limits (--header-timeout 1, --idle-timeout 1.5) and raw
sockets play the slow clients: silent, trickling headers (slowloris), idle keep-alive,
a silent CONNECT tunnel, and a crowd of them. Requests in flight are never cut.
"""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.support.hardening import parse_response, read_response, shared_gateway
from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401
from tests.support.upstream import Canned

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.5
RULES = """
    version: 1
    default: allow
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    with shared_gateway(tmp_path_factory.mktemp("connlimits"), confdir, RULES,
                        "--header-timeout", str(HEADER_TIMEOUT),
                        "--idle-timeout", str(IDLE_TIMEOUT)) as gw:
        yield gw


def connect(gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=IDLE_TIMEOUT + 4)


def seconds_until_closed(sock: socket.socket, started: float) -> float:
    """Reads until the gateway closes; fails if it does not within the socket timeout."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail("the gateway kept the stalled connection open")
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def request_bytes(upstream, path: str = "/ok") -> bytes:
    return (f"GET http://127.0.0.1:{upstream.port}{path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{upstream.port}\r\n\r\n").encode()


def test_limits_are_announced(gateway):
    assert "client timeouts: headers 1 s, idle 1.5 s" in gateway.output


def test_silent_connection_is_closed_after_the_header_timeout(gateway):
    started = time.monotonic()
    with connect(gateway) as sock:
        elapsed = seconds_until_closed(sock, started)
    assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 1.5


def test_trickled_headers_do_not_extend_the_header_timeout(gateway, upstream):
    started = time.monotonic()
    with connect(gateway) as sock:
        sock.sendall(request_bytes(upstream)[:-2])  # the head, without its final blank line
        try:
            for i in range(20):  # a header line every 0.2 s: slowloris
                time.sleep(0.2)
                sock.sendall(b"X-Slow-%d: 1\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = seconds_until_closed(sock, started)
    assert elapsed < HEADER_TIMEOUT + 1.5
    assert upstream.received == []


def test_idle_keep_alive_connection_is_closed_and_a_prompt_next_request_is_served(gateway, upstream):
    with connect(gateway) as sock:
        sock.sendall(request_bytes(upstream, "/first"))
        assert parse_response(read_response(sock)).status == 200
        time.sleep(IDLE_TIMEOUT / 2)  # within the idle limit: the connection still serves
        sock.sendall(request_bytes(upstream, "/second"))
        assert parse_response(read_response(sock)).status == 200
        started = time.monotonic()
        elapsed = seconds_until_closed(sock, started)
    assert IDLE_TIMEOUT * 0.9 <= elapsed < IDLE_TIMEOUT + 1.5
    assert [r.path for r in upstream.received] == ["/first", "/second"]


def test_silent_connect_tunnel_is_closed(gateway, tls_upstream):
    with connect(gateway) as sock:
        target = f"127.0.0.1:{tls_upstream.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()  # no TLS handshake follows
        elapsed = seconds_until_closed(sock, started)
    assert elapsed < HEADER_TIMEOUT + 1.5


def test_a_crowd_of_stalled_connections_is_closed_and_the_gateway_still_serves(gateway, upstream):
    crowd = [connect(gateway) for _ in range(200)]
    try:
        time.sleep(HEADER_TIMEOUT + 1.0)
        for sock in crowd:
            sock.settimeout(2)
            assert seconds_until_closed(sock, 0) is not None
    finally:
        for sock in crowd:
            sock.close()
    response = requests.get(upstream.url("/after"), proxies={"http": gateway.proxy_url}, timeout=10)
    assert response.status_code == 200


def test_a_slow_upstream_answer_is_not_cut(gateway, upstream):
    def slow(_received):
        time.sleep(IDLE_TIMEOUT + HEADER_TIMEOUT)
        return Canned(200, {"slow": True})

    upstream.routes["/slow"] = slow
    response = requests.get(upstream.url("/slow"), proxies={"http": gateway.proxy_url}, timeout=10)
    assert response.json() == {"slow": True}
