"""The canonical-request checks in-process: the engine (addons.guards.canonical), the addon on
mitmproxy test flows (addons.guards.requestguard), and the chunked-trailer adaptation.

The same attacks against the real gateway are in tests/test_smuggling.py and
tests/test_method_override.py; these pin down each rule of the engine cheaply.
"""

from __future__ import annotations

import json

import h11
import pytest
from h11._readers import ChunkedReader
from h11._receivebuffer import ReceiveBuffer
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.guards import chunkedtrailers
from addons.guards.canonical import check_body, check_query, check_request_head
from addons.guards.requestguard import RequestGuardAddon

CLEAN_HEADERS = [(b"Host", b"api.example"), (b"Accept", b"*/*"), (b"X-Note", b"a\tb \xe9\xff")]


def head(method=b"GET", path=b"/v1/ok", authority=b"", host=b"api.example",
         headers=None, scheme=b"https"):
    return check_request_head(method, path, authority, host,
                              CLEAN_HEADERS if headers is None else headers, scheme)


def test_a_clean_request_passes():
    assert head() is None
    assert head(b"PATCH", b"/v1/search?q=line1%0Aline2&x=%00") is None  # controls in the query are data
    assert head(b"M-SEARCH", b"*") is None  # any token is a method


@pytest.mark.parametrize(("fields", "needle"), [
    ({"method": b"GET /x HTTP/1.1\r\n\r\nDELETE"}, "method"),
    ({"method": b"GET\x00"}, "method"),
    ({"method": b""}, "method"),
    ({"path": b"/ok HTTP/1.1\r\nHost: x\r\n\r\nDELETE /t HTTP/1.1"}, "request target"),
    ({"path": b"/a b"}, "request target"),
    ({"path": b"/a\tb"}, "request target"),
    ({"path": b"/v1/tables/x%00.json"}, "percent-encoded"),
    ({"path": b"/v1/tables/x%0A"}, "percent-encoded"),
    ({"path": b"/v1/tables%0d/x"}, "percent-encoded"),
    ({"authority": b"api.example\r\nX: y"}, "authority"),
    ({"host": b"api.example\x00.evil"}, "host"),
    ({"scheme": b"https\r\n"}, "scheme"),
    ({"headers": [(b"X-A\r\nX-B", b"v")]}, "header name"),
    ({"headers": [(b"X-A ", b"v")]}, "header name"),
    ({"headers": [(b"X:A", b"v")]}, "header name"),
    ({"headers": [(b"", b"v")]}, "header name"),
    ({"headers": [(b"X-A", b"v\rX-B: w")]}, "control character"),
    ({"headers": [(b"X-A", b"v\nX-B: w")]}, "control character"),
    ({"headers": [(b"X-A", b"v\x00")]}, "control character"),
    ({"headers": [(b"X-A", b"v\x7f")]}, "control character"),
    ({"headers": [(b"X-A", b"v\r\n w")]}, "obsolete line folding"),
    ({"headers": [(b"X-A", b"v\r\n\tw")]}, "obsolete line folding"),
])
def test_framing_bytes_in_any_field_are_refused(fields, needle):
    refusal = head(**fields)
    assert refusal is not None
    assert refusal.error == "malformed_request"
    assert needle in refusal.reason
    assert "\r" not in refusal.reason and "\n" not in refusal.reason  # cannot forge log lines


def test_the_reason_never_quotes_a_header_value():
    refusal = head(headers=[(b"Authorization", b"Bearer sk-secret\r\nX: y")])
    assert "sk-secret" not in refusal.reason


@pytest.mark.parametrize("name", [b"X-HTTP-Method-Override", b"x-http-method", b"X-METHOD-OVERRIDE"])
def test_override_headers_are_refused(name):
    refusal = head(b"POST", headers=[(name, b"DELETE")])
    assert refusal.error == "method_override_refused"
    assert name.decode() in refusal.reason


@pytest.mark.parametrize("query", [b"_method=DELETE", b"a=1&_METHOD=delete", b"%5Fmethod=DELETE",
                                   b"%5f%6Dethod=DELETE", b"_method[]=DELETE", b"a=1;_method=PUT",
                                   b"+_method=DELETE", b"_method"])
def test_method_query_parameter_is_refused(query):
    refusal = check_query(b"/v1/x?" + query)
    assert refusal is not None and refusal.error == "method_override_refused"
    assert head(b"POST", b"/v1/x?" + query).error == "method_override_refused"


@pytest.mark.parametrize("query", [b"method=DELETE", b"my_method=x", b"q=_method", b"_methods=1",
                                   b"a=%5Fmethod", b""])
def test_look_alike_query_parameters_pass(query):
    assert check_query(b"/v1/x?" + query) is None


@pytest.mark.parametrize(("content_type", "body", "refused"), [
    ("application/x-www-form-urlencoded", b"name=x&_method=DELETE", True),
    ("application/x-www-form-urlencoded; charset=utf-8", b"%5Fmethod=DELETE", True),
    ("application/x-www-form-urlencoded", b"name=_method&method=x", False),
    ("multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--b--\r\n', True),
    ("multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="_method[]"\r\n\r\nDELETE\r\n--b--\r\n', True),
    ("multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="comment"\r\n\r\n_method\r\n--b--\r\n', False),
    ("application/json", b'{"_method": "DELETE"}', False),  # JSON bodies: see the module docs
])
def test_method_in_a_form_body(content_type, body, refused):
    refusal = check_body(content_type, body)
    assert (refusal is not None and refusal.error == "method_override_refused") is refused


# --- the addon on mitmproxy test flows ----------------------------------------------


STATES = FlowStates()


def guarded(flow: http.HTTPFlow, hook: str = "requestheaders") -> http.HTTPFlow:
    getattr(RequestGuardAddon(STATES), hook)(flow)  # the hooks need no options or master
    return flow


def test_addon_answers_400_json_and_records_the_cause():
    flow = tflow.tflow()
    flow.request.headers["X-Role"] = "user\radmin"
    guarded(flow)
    assert flow.response.status_code == 400
    body = json.loads(flow.response.content)
    assert body["error"] == "malformed_request"
    assert body["flow_id"] == flow.id and body["reason"]
    state = STATES.of(flow)
    assert state.decision == "blocked" and "control character" in state.reason


def test_addon_checks_h2_pseudo_headers():
    flow = tflow.tflow()
    flow.request.http_version = "HTTP/2.0"
    flow.request.data.path = b"/ok HTTP/1.1\r\nHost: x\r\n\r\nDELETE /v1/tables/x HTTP/1.1"
    guarded(flow)
    assert json.loads(flow.response.content)["error"] == "malformed_request"


def test_addon_leaves_a_clean_flow_alone():
    flow = tflow.tflow()
    guarded(flow)
    guarded(flow, "request")
    assert flow.response is None


def test_addon_refuses_trailers_and_form_overrides_in_the_request_hook():
    flow = tflow.tflow()
    flow.request.trailers = http.Headers(x_method="DELETE")
    guarded(flow, "request")
    assert json.loads(flow.response.content)["error"] == "trailers_refused"
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.headers["Content-Type"] = "application/x-www-form-urlencoded"
    flow.request.content = b"_method=DELETE"
    guarded(flow, "request")
    assert json.loads(flow.response.content)["error"] == "method_override_refused"


def test_addon_does_not_overwrite_an_earlier_refusal():
    flow = tflow.tflow(resp=True)
    flow.request.headers["X-A"] = "a\nb"
    before = flow.response
    guarded(flow)
    assert flow.response is before


# --- chunked trailers ------------------------------------------------------------------


class _Layer:
    request = None


def test_trailers_go_to_request_trailers_instead_of_ending_the_connection():
    layer = _Layer()
    layer.request = tflow.treq()
    reader = chunkedtrailers._TrailerKeepingReader(ChunkedReader(), layer)
    buf = ReceiveBuffer()
    buf += b"2\r\n{}\r\n0\r\nX-Method: DELETE\r\n\r\n"
    events = []
    while (event := reader(buf)) is not None:
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            break
    assert isinstance(events[-1], h11.EndOfMessage) and not events[-1].headers
    assert layer.request.trailers["x-method"] == "DELETE"


def test_loading_the_addon_wraps_the_installed_mitmproxy():
    from mitmproxy.proxy.layers.http import _http1

    with taddons.context(RequestGuardAddon(STATES)):  # load() installs the adaptation
        assert hasattr(_http1.Http1Connection.read_body, "__wrapped__")
    assert chunkedtrailers.install()  # idempotent
    assert hasattr(_http1.Http1Connection.read_body, "__wrapped__")
