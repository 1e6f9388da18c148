"""Issue 12, finding 5: masking must not be bypassed by content negotiation.

A real Flask upstream serves the same customer record as JSON, XML, CSV, JSONP, XSSI-
prefixed JSON, HTML, plain text, latin-1 text, UTF-16 and binary (``?format=``), the way
real APIs do. Through a real gateway and ``requests`` via HTTP_PROXY:

- a route with ``path`` masks gets its JSON masked, JSONP and XSSI JSON unwrapped,
  masked and re-wrapped exactly, and every other shape refused with 502
  ``response_not_maskable`` (recorded), unless the rule says ``on_unmaskable: pass``;
- a route with only ``detect`` masks has every text body scanned whatever its content
  type, and binary bodies refused.

On e493018 every non-JSON format here returned the SSN, card and e-mail in clear with
``X-Portcullis-Masked: 0``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from flask import Flask, Response, request
from werkzeug.serving import make_server

from addons.masking.bodies import Unparseable, rewrite, unwrap
from recordings.control import ask
from tests.support.gateway import GatewayProcess

SSN, CARD, EMAIL = "123-45-6789", "4111111111111111", "ann@example.com"
CUSTOMER = {"id": 7, "name": "Ann", "ssn": SSN, "card": CARD, "email": EMAIL}
PII = (SSN, CARD, EMAIL)

RULES = """
version: 1
default: allow
rules:
  - name: customer-paths
    match: {path: "/api/customers/**"}
    mask:
      - "$..ssn"
      - {path: "$..card", keep_last: 4}
      - {path: "$..email", with: "[email]"}
  - name: notes-detect
    match: {path: "/notes/**"}
    mask:
      - {detect: [ssn, card, email]}
  - name: outgoing-paths
    match: {method: POST, path: "/outgoing/**"}
    mask_request: ["$..ssn"]
  - name: passing-paths
    match: {path: "/pass/**"}
    mask: ["$..ssn"]
    on_unmaskable: pass
"""


#: Request bodies the Flask upstream received on /outgoing.
received: list[bytes] = []


def customer_app() -> Flask:
    """One record, many representations, chosen by ?format= as real APIs do."""
    app = Flask("negotiating-upstream")

    @app.post("/outgoing/<path:_where>")
    def outgoing(_where: str) -> Response:
        received.append(request.get_data())
        return Response("{}", mimetype="application/json")

    @app.get("/<path:_where>")
    def customer(_where: str) -> Response:
        fmt = request.args.get("format", "json")
        body = json.dumps(CUSTOMER)
        if fmt == "json":
            return Response(body, mimetype="application/json")
        if fmt == "jsonp":
            callback = request.args.get("callback", "cb")
            return Response(f"/**/{callback}({body});", mimetype="application/javascript")
        if fmt == "xssi":
            return Response(")]}',\n" + body, mimetype="application/json")
        if fmt == "while1":
            return Response("while(1);" + body, mimetype="application/json")
        if fmt == "xml":
            fields = "".join(f"<{k}>{v}</{k}>" for k, v in CUSTOMER.items())
            return Response(f"<?xml version='1.0'?><customer>{fields}</customer>", mimetype="application/xml")
        if fmt == "csv":
            return Response(",".join(CUSTOMER) + "\r\n" + ",".join(map(str, CUSTOMER.values())) + "\r\n",
                            mimetype="text/csv")
        if fmt == "html":
            return Response(f"<html><body><p>SSN {SSN}</p><p>{EMAIL}</p><p>{CARD}</p></body></html>",
                            mimetype="text/html")
        if fmt == "text":
            return Response(f"ssn={SSN} card={CARD} email={EMAIL}", content_type="x-custom/unknown")
        if fmt == "latin1":  # no charset declared, not UTF-8: a client reads it as latin-1
            return Response(f"Zoë ssn={SSN} card={CARD} email={EMAIL}".encode("latin-1"),
                            content_type="text/plain")
        if fmt == "utf16":
            return Response(f"ssn={SSN} card={CARD} email={EMAIL}".encode("utf-16"),
                            content_type="text/plain; charset=utf-16")
        if fmt == "binary":
            return Response(b"\x89PNG\r\n\x1a\n\x00\x00" + f"ssn={SSN} {EMAIL}".encode() + b"\xff\x00",
                            mimetype="image/png")
        if fmt == "bad-charset":
            return Response(f"ssn={SSN}".encode(), content_type="text/plain; charset=x-unheard-of")
        if fmt == "undecodable":
            return Response(b"\xff\xfe\xfa" + f"ssn={SSN}".encode(), content_type="text/plain; charset=utf-8")
        return Response("no such format", status=400)

    return app


@pytest.fixture(scope="module")
def flask_upstream() -> Iterator[str]:
    server = make_server("127.0.0.1", 0, customer_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir) -> Iterator[GatewayProcess]:
    rules = tmp_path_factory.mktemp("negotiation") / "rules.yaml"
    rules.write_text(RULES)
    process = GatewayProcess(rules, confdir).start()
    yield process
    process.stop()


def get(gateway: GatewayProcess, url: str) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": gateway.proxy_url, "https": gateway.proxy_url}
    return session.get(url, timeout=10)


def recorded(gateway: GatewayProcess, flow_id: str) -> tuple:
    query = f"SELECT status_code, error, response_body FROM flows WHERE id = '{flow_id}'"
    deadline = time.monotonic() + 10
    while True:
        rows = ask(gateway.db, "/query", {"sql": query})["rows"]
        if rows or time.monotonic() > deadline:
            assert rows, f"flow {flow_id} was not recorded"
            return tuple(rows[0])
        time.sleep(0.05)


def assert_refused(gateway: GatewayProcess, response: requests.Response, reason: str) -> None:
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "response_not_maskable"
    assert reason in body["reason"]
    assert body["flow_id"]
    for value in PII:
        assert value not in response.text
    status, error, recorded_body = recorded(gateway, body["flow_id"])
    assert (status, error) == (502, "response_not_maskable")
    assert all(value not in (recorded_body or "") for value in PII)


# --- path masks --------------------------------------------------------------------------


def test_json_is_masked(gateway, flask_upstream):
    response = get(gateway, f"{flask_upstream}/api/customers/7")
    assert response.json() == {**CUSTOMER, "ssn": "[masked]", "card": "************1111", "email": "[email]"}
    assert response.headers["X-Portcullis-Masked"] == "3"


@pytest.mark.parametrize(("fmt", "prefix", "suffix"), [
    ("jsonp", "/**/cb(", ");"),
    ("xssi", ")]}',\n", ""),
    ("while1", "while(1);", ""),
])
def test_wrapped_json_is_unwrapped_masked_and_rewrapped_exactly(gateway, flask_upstream, fmt, prefix, suffix):
    response = get(gateway, f"{flask_upstream}/api/customers/7?format={fmt}")
    assert response.status_code == 200
    text = response.text
    assert text.startswith(prefix) and text.endswith(suffix)
    inner = json.loads(text[len(prefix):len(text) - len(suffix)])
    assert inner == {**CUSTOMER, "ssn": "[masked]", "card": "************1111", "email": "[email]"}
    assert response.headers["X-Portcullis-Masked"] == "3"


def test_jsonp_with_a_dotted_callback_name(gateway, flask_upstream):
    response = get(gateway, f"{flask_upstream}/api/customers/7?format=jsonp&callback=jQuery.cb_1")
    assert response.text.startswith("/**/jQuery.cb_1(") and SSN not in response.text


@pytest.mark.parametrize(("fmt", "reason"), [
    ("xml", "application/xml body is not JSON"),
    ("csv", "text/csv body is not JSON"),
    ("html", "text/html body is not JSON"),
    ("text", "x-custom/unknown body is not JSON"),
    ("binary", "image/png body is not JSON"),
    ("utf16", "text/plain body is not JSON"),
    ("latin1", "text/plain body is not JSON"),
])
def test_other_formats_on_a_path_masked_route_are_refused(gateway, flask_upstream, fmt, reason):
    assert_refused(gateway, get(gateway, f"{flask_upstream}/api/customers/7?format={fmt}"), reason)


def test_on_unmaskable_pass_lets_other_formats_through(gateway, flask_upstream):
    response = get(gateway, f"{flask_upstream}/pass/7?format=xml")
    assert response.status_code == 200 and f"<ssn>{SSN}</ssn>" in response.text
    assert response.headers["X-Portcullis-Masked"] == "0"


def test_request_bodies_that_are_not_json_are_not_forwarded_on_a_mask_request_route(gateway, flask_upstream):
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": gateway.proxy_url}
    received.clear()
    form = session.post(f"{flask_upstream}/outgoing/x", data={"ssn": SSN}, timeout=10)
    assert form.status_code == 422 and form.json()["error"] == "request_not_maskable"
    assert "application/x-www-form-urlencoded body is not JSON" in form.json()["reason"]
    assert received == []
    ok = session.post(f"{flask_upstream}/outgoing/x", json={"ssn": SSN}, timeout=10)
    assert ok.status_code == 200 and received == [b'{"ssn":"[masked]"}']


# --- detect masks ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml", "csv", "html", "text", "latin1", "utf16", "jsonp", "xssi"])
def test_detect_masks_scan_every_text_body(gateway, flask_upstream, fmt):
    response = get(gateway, f"{flask_upstream}/notes/7?format={fmt}")
    assert response.status_code == 200, response.text
    for value in PII:
        assert value not in response.text, (fmt, response.text)
    assert "[masked:ssn]" in response.text
    assert int(response.headers["X-Portcullis-Masked"]) >= 3


@pytest.mark.parametrize(("fmt", "reason"), [
    ("binary", "binary body"),
    ("bad-charset", "unknown charset"),
    ("undecodable", "does not decode as its declared charset"),
])
def test_detect_masks_refuse_what_they_cannot_read(gateway, flask_upstream, fmt, reason):
    assert_refused(gateway, get(gateway, f"{flask_upstream}/notes/7?format={fmt}"), reason)


# --- in-process: the body engine ---------------------------------------------------------


def mask_ssn(document):
    if isinstance(document, dict) and "ssn" in document:
        return {**document, "ssn": "[masked]"}, True
    return document, False


def no_text(text):
    return text, False


@pytest.mark.parametrize(("body", "prefix", "suffix"), [
    (b")]}'\n{\"ssn\": \"1\"}", b")]}'\n", b""),
    (b")]}',\n[1]", b")]}',\n", b""),
    (b"for(;;);{\"a\":1}", b"for(;;);", b""),
    (b"  cb ( {\"a\": 1} ) ;\n", b"  cb ( ", b" ) ;\n"),
    (b"/**/a.b[0]({\"a\": 1})", b"/**/a.b[0](", b")"),
])
def test_unwrap_keeps_prefix_and_suffix_bytes(body, prefix, suffix):
    assert unwrap(body) == (prefix, body[len(prefix):len(body) - len(suffix)], suffix)


@pytest.mark.parametrize("body", [b"cb({not json})", b"alert(1); cb({\"a\":1})", b"cb({\"a\":1}); evil()",
                                  b")]}' <xml/>", b"<x>cb({})</x>"])
def test_unwrap_refuses_anything_but_one_json_value(body):
    assert unwrap(body) is None
    with pytest.raises(Unparseable):
        rewrite(body, "application/javascript", mask_ssn, no_text, need_json=True)


def test_rewrite_masks_inside_jsonp_and_xssi():
    assert rewrite(b'cb({"ssn": "1"});', "text/javascript", mask_ssn, no_text, need_json=True) == \
        b'cb({"ssn":"[masked]"});'
    assert rewrite(b')]}\'\n{"ssn": "1"}', "application/json", mask_ssn, no_text, need_json=True) == \
        b')]}\'\n{"ssn":"[masked]"}'


def test_need_json_refuses_text_and_stream_pieces_but_allows_bare_words():
    with pytest.raises(Unparseable, match="text/csv body is not JSON"):
        rewrite(b"ssn\n1", "text/csv", mask_ssn, no_text, need_json=True)
    with pytest.raises(Unparseable, match="stream is not JSON"):
        rewrite(b'{"ssn": "1"}\nssn=1\n', "application/x-ndjson", mask_ssn, no_text, need_json=True)
    assert rewrite(b'data: {"ssn": "1"}\n\ndata: [DONE]\n\n', "text/event-stream", mask_ssn, no_text,
                   need_json=True) == b'data: {"ssn":"[masked]"}\n\ndata: [DONE]\n\n'
    with pytest.raises(Unparseable, match="labelled JSON"):
        rewrite(b"ssn: 1", "application/json", mask_ssn, no_text, need_json=True)
