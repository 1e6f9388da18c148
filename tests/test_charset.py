"""Finding 4 of issue 12: only UTF-8/16/32 JSON (RFC 8259) on routes whose rules read the
body, so the policy and the upstream decode the same bytes to the same text.

`application/json; charset=utf-7` hid a second "amount" key: the policy read UTF-8 (50),
Express (body-parser + iconv-lite) read UTF-7 (25,000). Through the gateway to real Express,
then in-process for the decoding rules and :func:`addons.core.jsonbody.decoded_body_text`.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests

from addons.core.jsonbody import UninspectableBody, UnsupportedCharset, decoded_body_text
from addons.core.synthetic import make_flow
from addons.policy.conditions import CharsetRefused, RequestView
from addons.policy.engine import compile_policy
from tests.support.express import node_app
from tests.support.hardening import shared_gateway

RULES = """
    version: 1
    default: allow
    rules:
      - name: no-big-refunds
        match: {method: POST, path: /v1/refunds, json: {"$.amount": {gt: 1000}}}
        action: block
"""

EXPRESS_APP = r"""
const express = require('express');
const app = express();
app.use(express.json());
app.post('*', (req, res) => {
  console.log(JSON.stringify({amount: req.body.amount}));
  res.json({refunded: req.body.amount});
});
app.listen(process.env.PORT, '127.0.0.1');
"""


def utf7_hidden_amount() -> bytes:
    """A body whose UTF-8 reading has amount 50 and whose UTF-7 reading has 25000 last."""
    hidden = '","amount":25000,"x":"'
    shifted = b"+" + base64.b64encode(hidden.encode("utf-16-be")).rstrip(b"=") + b"-"
    return b'{"amount":50,"note":"' + shifted + b'"}'


@pytest.fixture(scope="module")
def express():
    with node_app(EXPRESS_APP) as app:
        yield app


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    with shared_gateway(tmp_path_factory.mktemp("charset"), confdir, RULES) as gw:
        yield gw


def test_utf7_cannot_hide_a_second_amount(gateway, express):
    body = utf7_hidden_amount()
    assert json.loads(body)["amount"] == 50  # what a UTF-8 reading sees
    headers = {"Content-Type": "application/json; charset=utf-7"}
    direct = requests.post(express.url("/v1/refunds"), data=body, headers=headers, timeout=30)
    assert direct.json() == {"refunded": 25000}  # what Express acts on
    deadline = time.monotonic() + 5
    while not express.json_logged() and time.monotonic() < deadline:
        time.sleep(0.01)
    express.clear_log()
    response = requests.post(express.url("/v1/refunds"), data=body, headers=headers, timeout=60,
                             proxies={"http": gateway.proxy_url})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error"] == "unsupported_charset"
    assert "utf-7" in answer["reason"] and answer["flow_id"]
    time.sleep(0.1)
    assert express.json_logged() == []


@pytest.mark.parametrize("charset", ["latin-1", "iso-8859-1", "shift_jis", "utf-7", "x-unknown"])
def test_other_declared_charsets_are_refused(gateway, express, charset):
    response = requests.post(express.url("/v1/refunds"), data=b'{"amount": 5}', timeout=60,
                             headers={"Content-Type": f"application/json; charset={charset}"},
                             proxies={"http": gateway.proxy_url})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_charset"


@pytest.mark.parametrize(("encoding", "charset"), [
    ("utf-8", "utf-8"), ("utf-8", None), ("utf-16", "utf-16"), ("utf-16-le", "utf-16le"),
    ("utf-16-be", None), ("utf-32-le", "utf-32le"),
])
def test_unicode_json_is_read_in_every_rfc_8259_encoding(gateway, express, encoding, charset):
    content_type = "application/json" + (f"; charset={charset}" if charset else "")
    for amount, status in ((25000, 403), (5, None)):
        body = json.dumps({"amount": amount}).encode(encoding)
        response = requests.post(express.url("/v1/refunds"), data=body, timeout=60,
                                 headers={"Content-Type": content_type},
                                 proxies={"http": gateway.proxy_url})
        if status == 403:
            assert response.status_code == 403 and response.json()["error"] == "blocked_by_policy"
        else:
            assert response.headers.get("x-portcullis-decision") == "allowed"


def test_a_charset_that_contradicts_the_bytes_is_refused(gateway, express):
    response = requests.post(express.url("/v1/refunds"), data='{"amount": 5}'.encode("utf-16-le"),
                             headers={"Content-Type": "application/json; charset=utf-8"},
                             proxies={"http": gateway.proxy_url}, timeout=60)
    assert response.status_code == 400 and response.json()["error"] == "unsupported_charset"


# --- in-process ---------------------------------------------------------------------


def request(body: bytes, content_type: str):
    return make_flow("POST", "http://api.test/v1/refunds", {"Content-Type": content_type}, body).request


def test_decoded_body_text_is_what_the_policy_read():
    text = '{"amount": 5, "note": "café"}'
    for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"):
        assert decoded_body_text(request(text.encode(encoding), "application/json")) == text
    assert decoded_body_text(request(b"amount=5&n=caf%C3%A9", "application/x-www-form-urlencoded")) == (
        "amount=5&n=caf%C3%A9")
    with pytest.raises(UnsupportedCharset, match="utf-7"):
        decoded_body_text(request(utf7_hidden_amount(), "application/json; charset=utf-7"))
    with pytest.raises(UnsupportedCharset):
        decoded_body_text(request(b"caf\xe9", "text/plain; charset=latin-1"))
    with pytest.raises(UninspectableBody):
        decoded_body_text(request(b"\xff\xfe\xfd", "application/octet-stream"))


def test_the_engine_raises_the_charset_refusal():
    policy = compile_policy(RULES.replace("\n    ", "\n"))
    flow = make_flow("POST", "http://api.test/v1/refunds",
                     {"Content-Type": "application/json; charset=utf-7"}, utf7_hidden_amount())
    with pytest.raises(CharsetRefused) as info:
        policy.evaluate(RequestView(flow))
    assert info.value.error_code == "unsupported_charset"
