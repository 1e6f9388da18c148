"""Masking end to end: a real gateway subprocess, a real upstream, real HTTP clients.

One gateway serves most tests (masks differ by path); tests that restart a gateway or
need other settings start their own.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import stat
import textwrap
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import brotli
import duckdb
import pytest
import requests
import zstandard

from tests.support.gateway import GatewayProcess
from tests.support.mitmdump import mitmdump
from tests.support.upstream import Canned, UpstreamServer

MASK_KEY = "test-mask-key-for-the-shared-gateway"

RULES = """
    version: 1
    default: allow
    rules:
      - name: mask-customer-pii
        match: {path: "/v1/customers/**"}
        mask:
          - "$..ssn"
          - {path: "$..card_number", keep_last: 4}
          - {path: "$..email", with: hash}
          - {path: "$..dob", with: null}
          - {path: "$..internal", with: remove}
          - {path: "$..nickname", with: "<hidden>"}
          - {path: "$.items[*].notes", detect: [email, phone, card, ssn, iban, secret]}
          - {path: "$.users[?(@.role=='admin')].token"}
          - {header: "x-internal-token"}
      - name: secrets-anywhere
        match: {path: "/v1/**"}
        mask:
          - {detect: [secret]}
      - name: pass-when-unmaskable
        match: {path: "/pass/**"}
        mask: ["$..ssn"]
        on_unmaskable: pass
      - name: scrub-outgoing-messages
        match: {method: POST, path: "/v1/messages"}
        mask_request:
          - {path: "$.messages[*].content", detect: [email, card]}
          - {header: "x-user-email", with: hash}
      - name: blocked-with-mask
        match: {path: "/v1/blocked/**"}
        action: block
        mask: ["$..ssn"]
"""

CUSTOMER = {
    "id": 7,
    "name": "Zoë Ångström ☃",
    "ssn": "123-45-6789",
    "card_number": "4242424242424242",
    "email": "zoe@example.com",
    "dob": "1990-01-02",
    "internal": {"score": 3},
    "nickname": "Zo",
    "balance": 1.10,
    "big": 123456789012345678901234567890,
    "items": [
        {"notes": "mail zoe@example.com or call +1 415 555 2671", "ssn": "123-45-6789"},
        {"notes": "card 4111 1111 1111 1111, not 4111 1111 1111 1112", "sku": "A-1"},
    ],
    "users": [{"role": "admin", "token": "t-admin"}, {"role": "viewer", "token": "t-viewer"}],
    "deep": {"a": [{"b": {"email": "deep@example.com"}}]},
}
RAW_CUSTOMER = json.dumps(CUSTOMER).replace("1.1,", "1.10,")


def token(value: str, prefix: str, key: bytes = MASK_KEY.encode()) -> str:
    return f"{prefix}_{hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:12]}"


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory, confdir) -> Iterator[GatewayProcess]:
    rules = tmp_path_factory.mktemp("masking") / "rules.yaml"
    rules.write_text(textwrap.dedent(RULES))
    gateway = GatewayProcess(rules, confdir, ["--max-mask-body", "64k"], {"PORTCULLIS_MASK_KEY": MASK_KEY})
    yield gateway.start()
    gateway.stop()


@pytest.fixture
def gw(shared_gateway, shared_upstream, use_gateway) -> UpstreamServer:
    """Route this test's HTTP clients through the shared gateway; returns the upstream."""
    use_gateway(shared_gateway)
    shared_upstream.received.clear()
    shared_upstream.routes.clear()
    return shared_upstream


def serve(upstream: UpstreamServer, path: str, body: bytes | str, content_type: str = "application/json",
          **headers: str) -> str:
    upstream.routes[path] = Canned(200, body, {"Content-Type": content_type, **headers})
    return upstream.url(path)


def test_every_replacement_type_and_path_form(gw):
    url = serve(gw, "/v1/customers/7", RAW_CUSTOMER, **{"X-Internal-Token": "s3cr3t", "X-Other": "kept"})
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "id": 7,
        "name": "Zoë Ångström ☃",
        "ssn": "[masked]",
        "card_number": "************4242",
        "email": token("zoe@example.com", "email"),
        "dob": None,
        "nickname": "<hidden>",
        "balance": 1.1,
        "big": 123456789012345678901234567890,
        "items": [
            {"notes": "mail [masked:email] or call [masked:phone]", "ssn": "[masked]"},
            {"notes": "card [masked:card], not 4111 1111 1111 1112", "sku": "A-1"},
        ],
        "users": [{"role": "admin", "token": "[masked]"}, {"role": "viewer", "token": "t-viewer"}],
        "deep": {"a": [{"b": {"email": token("deep@example.com", "email")}}]},
    }
    assert '"balance":1.10' in response.text  # the decimal's text is kept, not re-rounded
    assert "ë Ångström ☃" in response.text  # unicode not escaped
    assert response.headers["X-Internal-Token"] == "[masked]"
    assert response.headers["X-Other"] == "kept"
    # ssn x2, card, email x2, dob, internal, nickname, 3 detections, admin token, header
    assert response.headers["X-Portcullis-Masked"] == "13"
    assert response.headers["Content-Length"] == str(len(response.content))


def test_unmatched_routes_and_clean_bodies_pass_byte_for_byte(gw):
    pretty = json.dumps(CUSTOMER, indent=2)
    unmasked = requests.get(serve(gw, "/other/customers", pretty), timeout=10)
    assert unmasked.text == pretty
    assert "X-Portcullis-Masked" not in unmasked.headers
    clean = '{"id": 1,   "name": "nothing to hide"}'
    untouched = requests.get(serve(gw, "/v1/customers/1", clean), timeout=10)
    assert untouched.text == clean
    assert untouched.headers["X-Portcullis-Masked"] == "0"


def _encode(name: str, data: bytes) -> bytes:
    return {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "br": brotli.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }[name](data)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_encoded_responses_are_decoded_masked_and_sent_as_identity(gw, encoding):
    payload = _encode(encoding, json.dumps({"ssn": "123-45-6789", "ok": True}).encode())
    url = serve(gw, f"/v1/customers/{encoding}", payload, **{"Content-Encoding": encoding})
    response = requests.get(url, timeout=10, stream=True)
    raw = response.raw.read(decode_content=False)
    assert "Content-Encoding" not in response.headers
    assert response.headers["Content-Length"] == str(len(raw))
    assert json.loads(raw) == {"ssn": "[masked]", "ok": True}


def test_encoded_response_with_nothing_to_mask_keeps_its_encoding(gw):
    payload = gzip.compress(b'{"ok": true}')
    url = serve(gw, "/v1/customers/gz", payload, **{"Content-Encoding": "gzip"})
    response = requests.get(url, timeout=10, stream=True)
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.raw.read(decode_content=False) == payload


def test_ndjson_is_masked_line_by_line(gw):
    lines = ['{"ssn": "123-45-6789", "n": 1}', "", "not json: AKIAIOSFODNN7EXAMPLE", '[{"ssn": "1"}]']
    del lines[2]
    url = serve(gw, "/v1/customers/export", "\r\n".join(lines) + "\n", "application/x-ndjson")
    response = requests.get(url, timeout=10)
    assert response.text == '{"ssn":"[masked]","n":1}\r\n\r\n[{"ssn":"[masked]"}]\n'
    assert response.headers["X-Portcullis-Masked"] == "2"


def test_ndjson_line_that_is_not_json_is_refused_on_a_path_masked_route_and_scanned_elsewhere(gw):
    """Was: the non-JSON line passed the path masks untouched (issue 12, finding 5)."""
    lines = ['{"ssn": "123-45-6789", "n": 1}', "not json: ssn 123-45-6789 AKIAZ3MXQ7RT2PLW5HJK"]
    body = "\n".join(lines) + "\n"
    refused = requests.get(serve(gw, "/v1/customers/export2", body, "application/x-ndjson"), timeout=10)
    assert refused.status_code == 502 and refused.json()["error"] == "response_not_maskable"
    assert "123-45-6789" not in refused.text
    detect_only = requests.get(serve(gw, "/v1/other/export", body, "application/x-ndjson"), timeout=10)
    assert detect_only.text.splitlines()[1] == "not json: ssn 123-45-6789 [masked:secret]"


def test_sse_is_masked_event_by_event(gw):
    stream = (
        ": comment\n"
        "event: customer\nid: 1\ndata: {\"ssn\": \"123-45-6789\",\n"
        "data:  \"email\": \"a@example.com\"}\n\n"
        "data: plain text ghp_" + "a" * 36 + "\n\n"
        "data: [DONE]\n\n"
    )
    # Was: the plain-text event passed the path masks untouched (issue 12, finding 5).
    refused = requests.get(serve(gw, "/v1/customers/stream", stream, "text/event-stream"), timeout=10)
    assert refused.status_code == 502 and refused.json()["error"] == "response_not_maskable"
    stream = stream.replace("data: plain text ghp_" + "a" * 36 + "\n\n", "")
    response = requests.get(serve(gw, "/v1/customers/stream", stream, "text/event-stream"), timeout=10)
    expected_email = token("a@example.com", "email")
    assert response.text == (
        ": comment\n"
        f"event: customer\nid: 1\ndata: {{\"ssn\":\"[masked]\",\"email\":\"{expected_email}\"}}\n\n"
        "data: [DONE]\n\n"  # a bare word carries no value: allowed
    )


def test_json_is_sniffed_in_other_content_types_and_text_gets_only_detectors(gw):
    sniffed = requests.get(serve(gw, "/v1/customers/s", '{"ssn": "123-45-6789"}', "text/plain"), timeout=10)
    assert sniffed.json() == {"ssn": "[masked]"}
    text = "ssn: 123-45-6789\nkey: AKIAZ3MXQ7RT2PLW5HJK\n"
    # Was: text and binary bodies passed path masks (and detectors) untouched (issue 12, finding 5).
    plain = requests.get(serve(gw, "/v1/customers/t", text, "text/plain; charset=utf-8"), timeout=10)
    assert plain.status_code == 502 and plain.json()["error"] == "response_not_maskable"
    other = requests.get(serve(gw, "/v1/other/t", text, "text/plain; charset=utf-8"), timeout=10)
    assert other.text == "ssn: 123-45-6789\nkey: [masked:secret]\n"  # detect-only route: scanned
    binary = b"\x89PNG\r\n\x1a\n AKIAZ3MXQ7RT2PLW5HJK \xff\x00"
    image = requests.get(serve(gw, "/v1/other/i", binary, "image/png"), timeout=10)
    assert image.status_code == 502 and "binary" in image.json()["reason"]
    assert b"AKIAZ3MXQ7RT2PLW5HJK" not in image.content


def test_larger_bodies_are_masked_too(gw):
    """Above 32 KiB masking runs in a worker thread; the result must be the same."""
    items = [{"ssn": "123-45-6789", "n": i, "email": f"p{i}@example.com"} for i in range(800)]
    response = requests.get(serve(gw, "/v1/customers/many", json.dumps({"items": items})), timeout=10)
    assert len(response.content) > 32 * 1024
    body = response.json()
    assert [item["ssn"] for item in body["items"]] == ["[masked]"] * 800
    assert body["items"][5]["email"] == token("p5@example.com", "email")
    assert response.headers["X-Portcullis-Masked"] == "1600"


def test_oversize_response_is_refused_with_json_and_never_reaches_the_agent(gw):
    big = json.dumps({"ssn": "123-45-6789", "pad": "x" * 100_000})
    response = requests.get(serve(gw, "/v1/customers/big", big), timeout=10)
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "response_not_maskable"
    assert body["rules"] == ["mask-customer-pii", "secrets-anywhere"]
    assert "exceeds the masking limit" in body["reason"]
    assert "123-45-6789" not in response.text


def test_body_that_grows_past_the_limit_when_decoded_is_refused(gw):
    payload = gzip.compress(json.dumps({"ssn": "123-45-6789", "pad": "x" * 200_000}).encode())
    assert len(payload) < 64 * 1024
    url = serve(gw, "/v1/customers/bomb", payload, **{"Content-Encoding": "gzip"})
    response = requests.get(url, timeout=10)
    assert response.status_code == 502
    assert "decoded body" in response.json()["reason"]


def test_on_unmaskable_pass_lets_an_oversize_response_through(gw):
    big = json.dumps({"ssn": "123-45-6789", "pad": "x" * 100_000})
    response = requests.get(serve(gw, "/pass/big", big), timeout=10)
    assert response.status_code == 200
    assert response.json()["ssn"] == "123-45-6789"


def test_request_body_and_headers_reach_the_upstream_masked(gw):
    message = {"messages": [{"role": "user", "content": "I am ann@example.com, card 4242-4242-4242-4242"}],
               "model": "m"}
    response = requests.post(gw.url("/v1/messages"), json=message,
                             headers={"X-User-Email": "ann@example.com"}, timeout=10)
    assert response.status_code == 200
    (seen,) = gw.received
    assert seen.json() == {"messages": [{"role": "user", "content": "I am [masked:email], card [masked:card]"}],
                           "model": "m"}
    assert seen.headers["x-user-email"] == token("ann@example.com", "x_user_email")
    assert seen.headers["content-length"] == str(len(seen.body))


def test_encoded_request_bodies_are_masked_and_keep_their_encoding(gw):
    message = json.dumps({"messages": [{"content": "ann@example.com"}]}).encode()
    response = requests.post(gw.url("/v1/messages"), data=gzip.compress(message),
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}, timeout=10)
    assert response.status_code == 200
    (seen,) = gw.received
    assert seen.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(seen.body)) == {"messages": [{"content": "[masked:email]"}]}


def test_unmaskable_request_bodies_are_not_forwarded(gw):
    too_big = {"messages": [{"content": "ann@example.com " + "x" * 70_000}]}
    response = requests.post(gw.url("/v1/messages"), json=too_big, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"] == "request_not_maskable"
    assert response.headers["X-Portcullis-Decision"] == "blocked"
    assert gw.received == []


def test_blocked_flows_are_not_masked_and_head_requests_work(gw):
    blocked = requests.get(gw.url("/v1/blocked/1"), timeout=10)
    assert blocked.status_code == 403
    assert "X-Portcullis-Masked" not in blocked.headers
    serve(gw, "/v1/customers/head", RAW_CUSTOMER)
    head = requests.head(gw.url("/v1/customers/head"), timeout=10)
    assert head.status_code == 200


RESTART_RULES = """
    version: 1
    rules:
      - name: pseudonymise
        match: {path: "/v1/customers/**"}
        mask:
          - {path: "$..email", with: hash}
          - "$..ssn"
"""


def _recorded(db: Path) -> tuple[list[tuple], list[tuple], list[tuple]]:
    with duckdb.connect(str(db), read_only=True) as con:
        flows = con.execute("SELECT id, status_code, response_body FROM flows ORDER BY started_at").fetchall()
        masked = con.execute("SELECT flow_id, detail FROM events WHERE kind = 'masked'").fetchall()
        unmaskable = con.execute("SELECT flow_id, detail FROM events WHERE kind = 'unmaskable'").fetchall()
    return flows, masked, unmaskable


def test_pseudonyms_are_stable_across_restarts_and_recordings_hold_only_masked_values(
    start_gateway, use_gateway, upstream, confdir, monkeypatch
):
    monkeypatch.delenv("PORTCULLIS_MASK_KEY", raising=False)
    upstream.routes["/v1/customers/1"] = Canned(200, {"email": "kim@example.com", "ssn": "123-45-6789"})
    upstream.routes["/v1/customers/big"] = Canned(200, {"ssn": "123-45-6789", "pad": "x" * 2000})
    tokens = []
    for attempt in range(2):
        gateway = start_gateway(RESTART_RULES, "--max-mask-body", "1k")
        use_gateway(gateway)
        tokens.append(requests.get(upstream.url("/v1/customers/1"), timeout=10).json()["email"])
        if attempt == 0:
            gateway.stop()  # a restart: the second gateway must find the same key
    assert requests.get(upstream.url("/v1/customers/big"), timeout=10).status_code == 502
    gateway.stop()
    assert tokens[0] == tokens[1]
    key_file = confdir / "portcullis-mask.key"
    assert tokens[0] == token("kim@example.com", "email", key=bytes.fromhex(key_file.read_text()))
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    flows, masked, unmaskable = _recorded(gateway.db)
    (flow_id, status, recorded_body), (big_id, big_status, big_body) = flows
    assert (status, json.loads(recorded_body)) == (200, {"email": tokens[1], "ssn": "[masked]"})
    assert big_status == 502 and json.loads(big_body)["error"] == "response_not_maskable"
    (event_flow, detail), = masked
    assert event_flow == flow_id
    assert json.loads(detail) == {"rule": "pseudonymise", "count": 2, "paths": ["$.email", "$.ssn"],
                                  "target": "response"}
    (refused_flow, refused), = unmaskable
    assert refused_flow == big_id
    assert json.loads(refused)["action"] == "block" and json.loads(refused)["rules"] == ["pseudonymise"]
    everything = json.dumps([flows, masked, unmaskable])
    assert "kim@example.com" not in everything and "123-45-6789" not in everything


# --- responses without Content-Length ----------------------------------------------------


class _ChunkedHandler(BaseHTTPRequestHandler):
    """Answers with a chunked (length-unknown) JSON body, as streaming APIs do."""

    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format, *args):  # noqa: A002 - quiet test output
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        body = json.dumps({"ssn": "123-45-6789", "pad": "x" * 5000}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 1000):
            chunk = body[i:i + 1000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def chunked_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_chunked_responses_are_buffered_and_masked(gw, chunked_upstream):
    response = requests.get(f"{chunked_upstream}/v1/customers/chunked", timeout=10)
    assert response.status_code == 200
    assert response.json()["ssn"] == "[masked]"


STREAM_RULES = """\
version: 1
rules:
  - name: mask-customers
    match: {path: "/v1/customers/**"}
    mask: ["$..ssn"]
  - name: pass-when-unmaskable
    match: {path: "/pass/**"}
    mask: ["$..ssn"]
    on_unmaskable: pass
  - name: scrub-requests
    match: {method: POST, path: "/v1/messages"}
    mask_request: [{path: "$..content", detect: [email]}]
"""


def test_streamed_bodies_are_refused_unless_the_rule_passes_them(tmp_path, confdir, chunked_upstream, upstream):
    """Under mitmproxy's stream_large_bodies, bodies over that size, and bodies of unknown
    length (which mitmproxy may start streaming mid-way), would pass the masker: refuse them."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(STREAM_RULES)
    upstream.routes["/v1/customers/small"] = Canned(200, {"ssn": "123-45-6789"})
    upstream.routes["/v1/customers/large"] = Canned(200, {"ssn": "123-45-6789", "pad": "x" * 5000})
    with mitmdump(confdir, rules, "portcullis_db=", "portcullis_ui=off", "stream_large_bodies=1k") as proxies:
        small = requests.get(upstream.url("/v1/customers/small"), proxies=proxies, timeout=10)
        large = requests.get(upstream.url("/v1/customers/large"), proxies=proxies, timeout=10)
        chunked = requests.get(f"{chunked_upstream}/v1/customers/chunked", proxies=proxies, timeout=10)
        passed = requests.get(f"{chunked_upstream}/pass/chunked", proxies=proxies, timeout=10)
        small_post = requests.post(upstream.url("/v1/messages"), json={"content": "a@example.com"},
                                   proxies=proxies, timeout=10)
        with pytest.raises(requests.ConnectionError):  # streamed: it could not be checked or masked
            requests.post(upstream.url("/v1/messages"), json={"content": "a@example.com " + "x" * 5000},
                          proxies=proxies, timeout=10)
    assert small.status_code == 200 and small.json()["ssn"] == "[masked]"
    for refused in (large, chunked):
        assert refused.status_code == 502
        assert refused.json()["error"] == "response_not_maskable"
        assert "streamed" in refused.json()["reason"]
        assert "123-45-6789" not in refused.text
    assert passed.status_code == 200 and passed.json()["ssn"] == "123-45-6789"
    assert small_post.status_code == 200
    posts = [r.json() for r in upstream.received if r.path == "/v1/messages"]
    assert posts == [{"content": "[masked:email]"}]
