"""Malformed HTTP from an agent, over raw sockets: a clear JSON error, and the gateway
keeps serving (and nothing malformed reaches the upstream)."""

from __future__ import annotations

import pytest
import requests

from tests.support.hardening import raw_exchange, raw_request, recorded_flows, shared_gateway
from tests.support.module_servers import module_upstream  # noqa: F401
from tests.support.upstream import UpstreamServer

RULES = """
    version: 1
    default: allow
    rules:
      - name: no-tables
        match: {path: "/v1/tables/**"}
        action: block
      - name: header-check
        match: {path: /v1/header-rule, headers: {x-role: "admin*"}}
        action: block
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    with shared_gateway(tmp_path_factory.mktemp("malformed"), confdir, RULES) as gw:
        yield gw


def target(upstream: UpstreamServer, path: str = "/") -> bytes:
    return f"http://127.0.0.1:{upstream.port}{path}".encode()


def host(upstream: UpstreamServer) -> bytes:
    return f"127.0.0.1:{upstream.port}".encode()


def bad_requests(upstream: UpstreamServer) -> dict[str, bytes]:
    t, h = target(upstream, "/ok"), host(upstream)
    return {
        "garbage request line": b"GARBAGE\r\n\r\n",
        "request line without version": b"GET " + t + b"\r\n\r\n",
        "space in URL": b"GET http://exa mple.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "unterminated IPv6 literal": b"GET http://[::1/ HTTP/1.1\r\n\r\n",
        "URL without host": b"GET http:///path HTTP/1.1\r\n\r\n",
        "port out of range": b"GET http://127.0.0.1:99999/ HTTP/1.1\r\n\r\n",
        "non-UTF-8 path": b"GET " + t + b"/\xff\xfe HTTP/1.1\r\nHost: " + h + b"\r\n\r\n",
        "non-UTF-8 host": b"GET http://\xff\xfe/ HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
        "header without colon": b"GET " + t + b" HTTP/1.1\r\nHost: " + h + b"\r\nNoColonHere\r\n\r\n",
        "bad chunk size": (b"POST " + t + b" HTTP/1.1\r\nHost: " + h
                           + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        "chunk data without its CRLF": (b"POST " + t + b" HTTP/1.1\r\nHost: " + h
                                        + b"\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n"),
        "Content-Length and Transfer-Encoding": (b"POST " + t + b" HTTP/1.1\r\nHost: " + h
                                                 + b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
                                                 + b"\r\n\r\n0\r\n\r\n"),
        "two different Content-Lengths": (b"POST " + t + b" HTTP/1.1\r\nHost: " + h
                                          + b"\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        "negative Content-Length": (b"POST " + t + b" HTTP/1.1\r\nHost: " + h
                                    + b"\r\nContent-Length: -1\r\n\r\n"),
        "unknown Transfer-Encoding": (b"POST " + t + b" HTTP/1.1\r\nHost: " + h
                                      + b"\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        "origin-form without Host": b"GET /ok HTTP/1.1\r\n\r\n",
    }


@pytest.mark.parametrize("name", [
    "garbage request line", "request line without version", "space in URL",
    "unterminated IPv6 literal", "URL without host", "port out of range", "non-UTF-8 path",
    "non-UTF-8 host", "header without colon", "bad chunk size", "chunk data without its CRLF",
    "Content-Length and Transfer-Encoding", "two different Content-Lengths",
    "negative Content-Length", "unknown Transfer-Encoding", "origin-form without Host",
])
def test_malformed_request_gets_a_json_400(gateway, upstream, name):
    before = len(upstream.received)
    response = raw_request(gateway.port, bad_requests(upstream)[name])
    assert response.status == 400, response
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "bad_request"
    assert body["detail"]  # mitmproxy's reason, for the operator reading the agent's log
    assert len(upstream.received) == before, "a malformed request reached the upstream"


def test_oversized_headers_are_refused(gateway, upstream):
    head = b"GET " + target(upstream, "/big") + b" HTTP/1.1\r\nHost: " + host(upstream) + b"\r\n"
    response = raw_request(gateway.port, head + b"X-Big: " + b"a" * 300_000 + b"\r\n\r\n")
    assert response.status == 431
    assert response.json()["error"] == "headers_too_large"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
    response = raw_request(gateway.port, head + many + b"\r\n")
    assert response.status == 431
    assert not [r for r in upstream.received if r.path == "/big"]


def test_non_utf8_header_value_is_matched_safely_and_forwarded(gateway, upstream):
    # obs-text in header values is legal HTTP: it is forwarded byte for byte, and a
    # header rule compares it without crashing (it cannot equal the rule's text).
    head = b"GET " + target(upstream, "/v1/header-rule") + b" HTTP/1.1\r\nHost: " + host(upstream)
    response = raw_request(gateway.port, head + b"\r\nX-Role: admin\xff\xfe\r\nConnection: close\r\n\r\n")
    assert response.status == 403  # the glob admin* still matches the UTF-8 prefix
    response = raw_request(gateway.port, head + b"\r\nX-Role: \xffadmin\r\nConnection: close\r\n\r\n")
    assert response.status == 200
    assert upstream.received[-1].path == "/v1/header-rule"


def test_policy_still_applies_after_a_storm_of_bad_requests(gateway, upstream):
    for data in bad_requests(upstream).values():
        raw_exchange(gateway.port, data)
    proxies = {"http": gateway.proxy_url}
    assert requests.get(upstream.url("/fine"), proxies=proxies, timeout=10).status_code == 200
    blocked = requests.delete(upstream.url("/v1/tables/users"), proxies=proxies, timeout=10)
    assert blocked.status_code == 403
    assert blocked.json()["error"] == "blocked_by_policy"
    assert gateway.process.poll() is None
    assert "Traceback" not in gateway.output


def test_every_request_that_got_a_flow_id_is_recorded(gateway, upstream):
    # Requests that never became flows (unparseable request lines) have no flow id; the
    # ones that did (e.g. CL+TE smuggling attempts) are recorded with their error.
    smuggle = bad_requests(upstream)["Content-Length and Transfer-Encoding"]
    flow_id = raw_request(gateway.port, smuggle).headers["x-portcullis-flow-id"]
    # A clean stop writes every queued row; a gateway killed after the fixture's patience
    # (20 s by default) leaves them to the next start's recovery, and this read would not
    # see them. The row was missing in three loaded full-suite runs, cause not yet known:
    # the messages say how the gateway stopped and what it printed.
    code = gateway.stop(timeout=90)
    assert code == 0, f"the gateway did not stop cleanly ({code}):\n" + "\n".join(gateway.lines[-30:])
    rows = recorded_flows(gateway.db, "id = ?", [flow_id])
    assert len(rows) == 1, f"{flow_id} recorded {len(rows)} times; the gateway said:\n" + "\n".join(gateway.lines[-30:])
    assert rows[0]["error"] == "bad_request"
