"""Rebuilding a request from a recorded row (the replay path end to end is in test_audit_ui)."""

from __future__ import annotations

import gzip
import json

import pytest
from mitmproxy import connection

from addons.replay.addon import ReplayError, rebuild_request, replay_headers

ROW = {
    "id": "f1", "method": "post", "scheme": "https", "host": "api.example.com", "port": 8443,
    "path": "/v1/refunds", "query": "order=7&x=%20y",
    "request_headers": json.dumps([
        ["Host", "api.example.com:8443"], ["Content-Type", "application/json"],
        ["Authorization", "[redacted]"], ["Content-Length", "999"], ["X-Portcullis-Wait", "async"],
        ["Accept", "a"], ["Accept", "b"],
    ]),
    "request_body": '{"amount": 10}', "request_truncated": False,
}


def test_rebuilds_method_url_headers_and_body():
    flow = rebuild_request(ROW)
    request = flow.request
    assert request.method == "POST"
    assert request.url == "https://api.example.com:8443/v1/refunds?order=7&x=%20y"
    assert request.content == b'{"amount": 10}'
    assert request.headers["content-length"] == "14"
    assert request.headers.get_all("accept") == ["a", "b"]
    assert flow.client_conn.state == connection.ConnectionState.OPEN
    assert not flow.live and flow.response is None


def test_redacted_and_control_headers_are_not_replayed():
    names = {name.lower() for name in rebuild_request(ROW).request.headers}
    assert "authorization" not in names  # the credentials addon injects the current one
    assert "x-portcullis-wait" not in names


def test_headers_as_a_mapping_are_accepted():
    headers = replay_headers({"Accept": ["a", "b"], "Cookie": "[redacted]", "X-A": "1"})
    assert headers.fields == ((b"Accept", b"a"), (b"Accept", b"b"), (b"X-A", b"1"))


def test_binary_body_and_content_encoding_are_restored():
    row = dict(ROW, request_headers=json.dumps([["Content-Encoding", "gzip"]]),
               request_body=None, request_body_blob=b"\x00\x01binary")
    request = rebuild_request(row).request
    assert gzip.decompress(request.raw_content) == b"\x00\x01binary"
    assert request.content == b"\x00\x01binary"


def test_truncated_request_is_refused_with_a_clear_message():
    with pytest.raises(ReplayError) as info:
        rebuild_request(dict(ROW, request_truncated=True, request_size=2_000_000))
    assert info.value.status == 409 and info.value.code == "request_truncated"
    assert "truncated" in info.value.message and "2000000 bytes" in info.value.message


@pytest.mark.parametrize("change", [{"scheme": None}, {"host": ""}, {"method": "CONNECT"}, {"scheme": "ws"}])
def test_rows_without_an_http_request_are_refused(change):
    with pytest.raises(ReplayError) as info:
        rebuild_request(dict(ROW, **change))
    assert info.value.code == "not_replayable"


def test_ipv6_hosts_are_bracketed_and_default_ports_apply():
    flow = rebuild_request(dict(ROW, host="::1", port=None, scheme="http", query=""))
    assert (flow.request.host, flow.request.port, flow.request.path) == ("::1", 80, "/v1/refunds")
