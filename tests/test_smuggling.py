"""Request smuggling: framing bytes inside fields never reach the upstream (issue 12, finding 1).

A raw-byte logging upstream (tests/support/rawupstream.py) records everything the gateway
sends it, so these tests see a smuggled second request even where a real server would
have executed it silently. HTTP/2 is spoken with the ``h2`` library (which, configured
not to validate, sends exactly what it is given); HTTP/1 over raw sockets.
"""

from __future__ import annotations

import socket
import ssl
import time

import duckdb
import h2
import h2.config
import h2.connection
import h2.events
import pytest

from tests.support.certs import TestPki
from tests.support.hardening import raw_request, shared_gateway
from tests.support.rawupstream import RawUpstream

RULES = """
    version: 1
    default: allow
    upstreams:
      - host: "127.0.0.1"
        ca_bundle: {ca}
    rules:
      - name: no-table-deletes
        match: {{method: DELETE, path: "/v1/tables/**"}}
        action: block
"""

#: h2 4.3+ (CVE-2025-57804) refuses CR, LF and NUL in any field itself: the connection
#: ends with a GOAWAY before an addon sees the request (mitmproxy 12 ships with it).
#: Older h2 (mitmproxy 11's) passes them on, and the guard answers 400 JSON.
H2_REFUSES_CONTROLS = tuple(int(p) for p in h2.__version__.split(".")[:2]) >= (4, 3)
GOAWAY = -1

#: The smuggled request; it ends without whitespace (h2 refuses values that end in it),
#: and the headers mitmproxy writes after the field complete it.
SECOND = b"DELETE /v1/tables/customers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: x"


@pytest.fixture(scope="module")
def raw_upstream():
    server = RawUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_raw_upstream(pki: TestPki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server = RawUpstream(tls=context)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(raw_upstream, tls_raw_upstream):
    raw_upstream.clear()
    tls_raw_upstream.clear()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir, pki):
    with shared_gateway(tmp_path_factory.mktemp("smuggling"), confdir,
                        RULES.format(ca=pki.ca_cert)) as gw:
        yield gw


# --- HTTP/2 -------------------------------------------------------------------------


def h2_request(gateway, upstream: RawUpstream, headers: list[tuple[bytes, bytes]],
               body: bytes = b"", trailers: list[tuple[bytes, bytes]] | None = None,
               timeout: float = 10) -> tuple[int, bytes]:
    """One HTTP/2 request through a CONNECT tunnel; returns (status, body)."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)
    target = f"127.0.0.1:{upstream.port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    context = ssl.create_default_context(cafile=str(gateway.ca_cert))
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
    assert tls.selected_alpn_protocol() == "h2"
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                       normalize_outbound_headers=False, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=not body and not trailers)
    if body:
        conn.send_data(1, body, end_stream=not trailers)
    if trailers:
        conn.send_headers(1, trailers, end_stream=True)
    tls.sendall(conn.data_to_send())
    status, data = 0, b""
    with tls:
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.ConnectionTerminated) and not status:
                    return GOAWAY, data
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset
                                | h2.events.ConnectionTerminated):
                    return status, data
            tls.sendall(conn.data_to_send())
    return status, data


def pseudo(upstream: RawUpstream, method: bytes = b"GET", path: bytes = b"/v1/ok") -> list:
    return [(b":method", method), (b":scheme", b"https"),
            (b":authority", f"127.0.0.1:{upstream.port}".encode()), (b":path", path)]


H2_INJECTIONS = {
    "header value": lambda up: pseudo(up) + [(b"x-note", b"hi\r\n\r\n" + SECOND)],
    ":path": lambda up: pseudo(up, path=b"/v1/ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + SECOND),
    ":method": lambda up: pseudo(up, method=b"GET /v1/ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                 + SECOND + b"\r\nX-Pad: x"),
    "NUL in header value": lambda up: pseudo(up) + [(b"x-note", b"a\x00b")],
}


@pytest.mark.parametrize("where", list(H2_INJECTIONS))
def test_h2_field_with_crlf_never_smuggles_a_second_request(gateway, tls_raw_upstream, where):
    status, body = h2_request(gateway, tls_raw_upstream, H2_INJECTIONS[where](tls_raw_upstream))
    tls_raw_upstream.wait_idle(quiet_s=0.3)
    assert b"DELETE" not in tls_raw_upstream.received, tls_raw_upstream.received
    assert tls_raw_upstream.requests == []  # not even the allowed-looking GET
    if H2_REFUSES_CONTROLS and status == GOAWAY:
        return  # refused by the h2 library itself, before the guard
    assert status == 400, (status, body)
    assert b'"malformed_request"' in body and b'"flow_id"' in body and b'"reason"' in body


def test_h2_header_name_with_crlf_is_refused_by_mitmproxy_itself(gateway, tls_raw_upstream):
    # mitmproxy's HTTP/2 layer checks header *names* itself (validate_inbound_headers,
    # its default) and h2 refuses upper-case names with a GOAWAY; our guard checks them
    # too, should either be switched off. Either way nothing reaches the upstream.
    name = b"x-a\r\n\r\n" + SECOND.lower() + b"\r\nx-b"
    status, _ = h2_request(gateway, tls_raw_upstream, pseudo(tls_raw_upstream) + [(name, b"v")])
    assert status == 400 or (H2_REFUSES_CONTROLS and status == GOAWAY)
    tls_raw_upstream.wait_idle(quiet_s=0.3)
    assert tls_raw_upstream.received == b""


def test_h2_clean_request_still_reaches_the_upstream_over_http1(gateway, tls_raw_upstream):
    # The control: the same path through the same tunnel is forwarded (as HTTP/1.1), so
    # the refusals above are the guard, not a broken h2 path.
    status, _ = h2_request(gateway, tls_raw_upstream, pseudo(tls_raw_upstream) + [(b"x-note", b"a\tb")])
    assert status == 200
    assert tls_raw_upstream.requests == [("GET", "/v1/ok")]
    assert b"x-note: a\tb\r\n" in tls_raw_upstream.received


def test_h2_request_trailers_are_refused(gateway, tls_raw_upstream):
    status, body = h2_request(gateway, tls_raw_upstream, pseudo(tls_raw_upstream, b"POST"),
                              body=b"{}", trailers=[(b"x-method", b"DELETE")])
    assert status == 400
    assert b'"trailers_refused"' in body
    assert tls_raw_upstream.received == b""


# --- HTTP/1 -------------------------------------------------------------------------


def h1(upstream: RawUpstream, head_lines: bytes, path: bytes = b"/v1/ok", body: bytes = b"") -> bytes:
    host = f"127.0.0.1:{upstream.port}".encode()
    return (b"GET http://" + host + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
            + head_lines + b"Connection: close\r\n\r\n" + body)


H1_ATTACKS = {
    "bare CR in a header value": b"X-Role: user\rX-Role: admin\r\n",
    "obs-fold continuation line": b"X-Role: user\r\n admin\r\n",
    "obs-fold with a tab": b"X-Role: user\r\n\tadmin\r\n",
    "NUL in a header value": b"X-Role: us\x00er\r\n",
    "other control in a header value": b"X-Role: us\x0ber\r\n",
}


def test_h1_space_before_the_colon_is_refused_by_mitmproxy_itself(gateway, raw_upstream):
    # mitmproxy's HTTP/1 reader already refuses it (a 400 bad_request); the guard's
    # header-name check is the second line should that change.
    response = raw_request(gateway.port, h1(raw_upstream, b"X-Role : admin\r\n"))
    assert response.status == 400
    assert raw_upstream.received == b""


@pytest.mark.parametrize("name", list(H1_ATTACKS))
def test_h1_header_ambiguity_is_refused_before_the_upstream(gateway, raw_upstream, name):
    response = raw_request(gateway.port, h1(raw_upstream, H1_ATTACKS[name]))
    assert response.status == 400, response
    body = response.json()
    assert body["error"] == "malformed_request"
    assert body["reason"] and body["flow_id"]
    assert raw_upstream.received == b""


@pytest.mark.parametrize("path", [b"/v1/tables/customers%00.json", b"/v1/tables/customers%0a",
                                  b"/v1/tables%0D%0A/customers"])
def test_h1_percent_encoded_control_in_the_path_is_refused(gateway, raw_upstream, path):
    response = raw_request(gateway.port, h1(raw_upstream, b"", path=path))
    assert response.status == 400
    assert response.json()["error"] == "malformed_request"
    assert raw_upstream.received == b""


def test_h1_legitimate_fields_are_forwarded_unchanged(gateway, raw_upstream):
    # No false positives: a tab and obs-text in a value, a newline escaped in the query.
    response = raw_request(gateway.port, h1(raw_upstream, b"X-Note: a\tb \xe9\r\n",
                                            path=b"/v1/search?q=line1%0Aline2"))
    assert response.status == 200
    assert raw_upstream.requests == [("GET", "/v1/search?q=line1%0Aline2")]
    assert b"X-Note: a\tb \xe9\r\n" in raw_upstream.received


def test_chunked_request_with_trailers_is_answered_quickly(gateway, raw_upstream):
    host = f"127.0.0.1:{raw_upstream.port}".encode()
    data = (b"POST http://" + host + b"/v1/ok HTTP/1.1\r\nHost: " + host
            + b"\r\nTransfer-Encoding: chunked\r\nTrailer: X-Method\r\n\r\n"
            + b"2\r\n{}\r\n0\r\nX-Method: DELETE\r\n\r\n")
    started = time.monotonic()
    response = raw_request(gateway.port, data, timeout=5)
    assert time.monotonic() - started < 3
    assert response.status == 400
    assert response.json()["error"] == "trailers_refused"
    assert raw_upstream.received == b""
    # ... and the gateway still serves (the connection handler did not crash).
    assert raw_request(gateway.port, h1(raw_upstream, b"")).status == 200


def test_chunked_request_without_trailers_still_works(gateway, raw_upstream):
    host = f"127.0.0.1:{raw_upstream.port}".encode()
    data = (b"POST http://" + host + b"/v1/ok HTTP/1.1\r\nHost: " + host
            + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert raw_request(gateway.port, data).status == 200
    assert raw_upstream.requests == [("POST", "/v1/ok")]


def test_refusal_is_recorded_with_its_cause(gateway, raw_upstream):
    # Last in the module: reading the recording means stopping the shared gateway that wrote it.
    response = raw_request(gateway.port, h1(raw_upstream, H1_ATTACKS["obs-fold continuation line"]))
    flow_id = response.json()["flow_id"]
    gateway.stop()
    with duckdb.connect(str(gateway.db), read_only=True) as con:
        decision, reason = con.execute("SELECT decision, reason FROM flows WHERE id = ?",
                                       [flow_id]).fetchone()
        details = [row[0] for row in con.execute(
            "SELECT detail FROM events WHERE flow_id = ? AND kind = 'decided'", [flow_id]).fetchall()]
    assert decision == "blocked"
    assert "obsolete line folding" in reason
    assert any("malformed_request" in str(detail) for detail in details)
