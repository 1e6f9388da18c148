"""Findings 3 and the typed query conditions of issue 12: `json` conditions are typed and
fail closed, and cover every place a framework reads a field from.

Through the real gateway to a real Express app (express.json(), express.urlencoded({extended:
true}), multer: what real APIs run) and a Flask app; each attack is first sent straight to
the framework to show it really reads the hidden value, then through the gateway, which
must refuse it and forward nothing. In-process tests of the operators follow.
"""

from __future__ import annotations

import textwrap
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from addons.core.synthetic import make_flow
from addons.policy.conditions import EvaluationError, RequestView
from addons.policy.engine import compile_policy
from tests.support.express import node_app
from tests.support.hardening import shared_gateway

RULES = r"""
    version: 1
    default: allow
    rules:
      - name: no-big-refunds
        match: {method: POST, path: /v1/refunds, json: {"$.amount": {gt: 1000}}}
        action: block
        reason: refunds over 1000 need a human
      - name: no-drop
        match: {method: POST, path: /v1/sql, json: {"$.statement": {regex: "(?i)\\bdrop\\b"}}}
        action: block
      - name: no-real-export
        match: {path: /v1/export, query: {dry_run: {eq: false}}}
        action: block
"""

EXPRESS_APP = r"""
const express = require('express');
const multer = require('multer');
const app = express();
app.use(express.json());
app.use(express.urlencoded({extended: true}));
app.use(multer().any());
app.all('*', (req, res) => {
  const seen = req.body && req.body.amount !== undefined ? req.body.amount : req.query.amount;
  console.log(JSON.stringify({path: req.path, body: req.body, query: req.query}));
  // What a handler doing arithmetic with the field would act on.
  res.json({seen: seen === undefined ? null : seen, number: Number(seen)});
});
app.listen(process.env.PORT, '127.0.0.1');
"""


@pytest.fixture(scope="module")
def express() -> Iterator:
    with node_app(EXPRESS_APP, packages=("express@4", "multer@2")) as app:
        yield app


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    with shared_gateway(tmp_path_factory.mktemp("typed"), confdir, RULES) as gw:
        yield gw


def wait_logged(app, count: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while len(app.json_logged()) < count:
        assert time.monotonic() < deadline, f"the app logged {app.json_logged()}"
        time.sleep(0.01)


def multipart(fields: dict[str, str], boundary: str = "XyZ") -> tuple[dict[str, str], bytes]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ) + f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

#: name -> (path with query, headers, body, error the gateway gives, Number() Express acts on)
ATTACKS = {
    "numeric string": ("/v1/refunds", JSON, b'{"amount": "25000"}', "blocked_by_policy", 25000),
    "spaced numeric string": ("/v1/refunds", JSON, b'{"amount": " 25000 "}', "blocked_by_policy", 25000),
    "exponent string": ("/v1/refunds", JSON, b'{"amount": "2.5e4"}', "blocked_by_policy", 25000),
    "array": ("/v1/refunds", JSON, b'{"amount": [25000]}', "policy_error", 25000),
    "form": ("/v1/refunds", FORM, b"amount=25000", "blocked_by_policy", 25000),
    "form brackets": ("/v1/refunds", FORM, b"amount[]=25000", "policy_error", 25000),
    "form index": ("/v1/refunds", FORM, b"amount[0]=25000", "policy_error", 25000),
    "form repeated": ("/v1/refunds", FORM, b"amount=5&amount=25000", "policy_error", None),
    "multipart": ("/v1/refunds", *multipart({"amount": "25000"}), "blocked_by_policy", 25000),
    "multipart brackets": ("/v1/refunds", *multipart({"amount[]": "25000"}), "policy_error", 25000),
    "query": ("/v1/refunds?amount=25000", JSON, b"{}", "blocked_by_policy", 25000),
    "query and body disagree": ("/v1/refunds?amount=25000", FORM, b"currency=EUR&amount=5", "policy_error", None),
    "key case": ("/v1/refunds", JSON, b'{"Amount": 25000}', "blocked_by_policy", None),
    "two key cases": ("/v1/refunds", JSON, b'{"amount": 5, "AMOUNT": 25000}', "policy_error", None),
    "boolean": ("/v1/refunds", JSON, b'{"amount": true}', "policy_error", None),
    "non-numeric string": ("/v1/refunds", JSON, b'{"amount": "0x61A8"}', "policy_error", 25000),
    "untyped body": ("/v1/refunds", {"Content-Type": "text/plain"}, b"amount=25000", "policy_error", None),
    "regex on an array": ("/v1/sql", JSON, b'{"statement": ["DROP TABLE customers"]}', "policy_error", None),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_bypass_of_a_json_condition_is_refused(gateway, express, name):
    path, headers, body, error, number = ATTACKS[name]
    express.clear_log()
    if number is not None:  # the framework really acts on the hidden value
        direct = requests.post(express.url(path), data=body, headers=headers, timeout=30)
        assert direct.json()["number"] == number, direct.text
        wait_logged(express, 1)
    express.clear_log()
    response = requests.post(express.url(path), data=body, headers=headers, timeout=60,
                             proxies={"http": gateway.proxy_url})
    assert response.status_code == 403, response.text
    answer = response.json()
    assert answer["error"] == error
    assert answer["reason"] and answer["flow_id"]
    assert_nothing_reached(express)


def assert_nothing_reached(app) -> None:
    """Nothing reached the app: a marker request sent straight to it after the gateway's
    answer is the one request it logs (it logs each in turn; its output is read by a
    thread, so wait for the marker's line rather than a fixed time)."""
    marker = f"/marker-{uuid.uuid4().hex}"
    assert requests.get(app.url(marker), timeout=30).status_code == 200
    deadline = time.monotonic() + 5
    while marker not in [line.get("path") for line in app.json_logged()]:
        assert time.monotonic() < deadline, f"the app logged {app.json_logged()}"
        time.sleep(0.01)
    assert [line.get("path") for line in app.json_logged()] == [marker], app.json_logged()


@pytest.mark.parametrize(("path", "headers", "body"), [
    ("/v1/refunds", JSON, b'{"amount": 50}'),
    ("/v1/refunds", JSON, b'{"amount": "50"}'),
    ("/v1/refunds", FORM, b"amount=50&currency=EUR"),
    ("/v1/refunds", *multipart({"amount": "50"})),
    ("/v1/refunds?amount=50", JSON, b'{"amount": 50}'),
    ("/v1/sql", JSON, b'{"statement": "SELECT 1"}'),
])
def test_ordinary_requests_still_pass(gateway, express, path, headers, body):
    express.clear_log()
    response = requests.post(express.url(path), data=body, headers=headers, timeout=60,
                             proxies={"http": gateway.proxy_url})
    assert response.status_code == 200, response.text
    # What the handler acts on: 50 from every form of the refund; the SQL body has no amount.
    assert response.json()["number"] == (None if path == "/v1/sql" else 50)
    wait_logged(express, 1)


def test_the_policy_error_says_why(gateway, express):
    response = requests.post(express.url("/v1/refunds"), json={"amount": [25000]}, timeout=60,
                             proxies={"http": gateway.proxy_url})
    assert "gt needs a number, got an array" in response.json()["reason"]


@pytest.mark.parametrize(("query", "error"), [
    ("dry_run=False", "blocked_by_policy"),  # passed the old `dry_run: "false"` glob
    ("dry_run=0", "blocked_by_policy"),
    ("dry_run=NO", "blocked_by_policy"),
    ("DRY_RUN=false", "blocked_by_policy"),
    ("dry_run=maybe", "policy_error"),
    ("dry_run=true&dry_run=false", "policy_error"),
    ("dry_run[]=false", "policy_error"),
])
def test_typed_query_conditions(gateway, express, query, error):
    response = requests.get(express.url(f"/v1/export?{query}"), timeout=60,
                            proxies={"http": gateway.proxy_url})
    assert response.status_code == 403, response.text
    assert response.json()["error"] == error


@pytest.mark.parametrize("query", ["dry_run=true", "dry_run=1", "", "other=false"])
def test_dry_runs_pass(gateway, express, query):
    response = requests.get(express.url(f"/v1/export?{query}"), timeout=60,
                            proxies={"http": gateway.proxy_url})
    assert response.status_code == 200, response.text


# --- Flask: get_json(force=True) reads JSON whatever the content type ------------------

@pytest.fixture(scope="module")
def flask_url() -> Iterator[str]:
    app = Flask("typed")

    @app.post("/v1/refunds")
    def refund():
        return jsonify(amount=request.get_json(force=True).get("amount"))

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_body_of_another_type_that_flask_reads_as_json_is_refused(gateway, flask_url):
    headers = {"Content-Type": "application/octet-stream"}
    body = b'{"amount": 25000}'
    assert requests.post(flask_url + "/v1/refunds", data=body, headers=headers, timeout=30).json() == {
        "amount": 25000}
    response = requests.post(flask_url + "/v1/refunds", data=body, headers=headers, timeout=60,
                             proxies={"http": gateway.proxy_url})
    assert response.status_code == 403
    assert response.json()["error"] == "policy_error"


# --- the operators, in-process ------------------------------------------------------

def evaluate(condition: str, body: bytes, content_type: str = "application/json") -> str:
    policy = compile_policy(textwrap.dedent(f"""
        version: 1
        default: allow
        rules:
          - name: r
            match: {{json: {{"$.v": {condition}}}}}
            action: block
    """))
    flow = make_flow("POST", "http://api.test/x", {"Content-Type": content_type}, body)
    try:
        return policy.evaluate(RequestView(flow)).action
    except EvaluationError:
        return "error"


@pytest.mark.parametrize(("condition", "value", "outcome"), [
    ("{gt: 1000}", "25000", "block"),
    ("{gt: 1000}", '"25000"', "block"),
    ("{gt: 1000}", '"1e3"', "allow"),
    ("{gt: 1000}", '""', "error"),
    ("{gt: 1000}", '"\uff12\uff15"', "error"),  # full-width digits: Python reads them, JS not
    ("{gt: 1000}", "null", "error"),
    ("{gt: 1000}", "{}", "error"),
    ("{gte: 1, lte: 5}", '"3"', "block"),
    ("{eq: 5}", '"5"', "block"),
    ("{ne: 5}", '"5"', "allow"),  # "5" is 5: ne must not become true by type confusion
    ("{ne: 5}", '"five"', "error"),
    ("{ne: 5}", "[5]", "error"),
    ("{eq: true}", '"TRUE"', "block"),
    ("{eq: true}", "1", "block"),
    ("{eq: true}", "2", "error"),
    ("{eq: delete}", '"delete"', "block"),
    ("{eq: delete}", '["delete"]', "error"),
    ("{eq: null}", "null", "block"),
    ("{in: [a, b]}", '"b"', "block"),
    ("{in: [1, 2]}", '"2"', "block"),
    ("{in: [1, 2]}", '"x"', "error"),
    ("{in: [1, x]}", '"x"', "block"),
    ("{regex: '^a'}", '"abc"', "block"),
    ("{regex: '^a'}", "1", "error"),
    ("{exists: true}", "null", "block"),
])
def test_operators_are_typed_and_fail_closed(condition, value, outcome):
    assert evaluate(condition, b'{"v": ' + value.encode() + b"}") == outcome


def test_absent_fields_do_not_match_and_exists_false_holds():
    assert evaluate("{gt: 1}", b'{"w": 5}') == "allow"
    assert evaluate("{exists: false}", b'{"w": 5}') == "block"
    assert evaluate("{exists: false}", b"") == "block"


def test_every_selected_value_is_typed():
    # `$..v` picks several values: one of the wrong type refuses, even if another matches.
    policy = compile_policy(textwrap.dedent("""
        version: 1
        rules:
          - {name: r, match: {json: {"$..v": {gt: 10}}}, action: block}
    """))
    flow = make_flow("POST", "http://api.test/x", {}, b'{"a": {"v": 50}, "b": {"v": [1]}}')
    with pytest.raises(EvaluationError, match="array"):
        policy.evaluate(RequestView(flow))


def test_query_globs_keep_working():
    policy = compile_policy(textwrap.dedent("""
        version: 1
        rules:
          - {name: r, match: {query: {mode: "fast*", n: {gt: 2}}}, action: block}
    """))
    def action(url):
        return policy.evaluate(RequestView(make_flow("GET", url, {}, b""))).action
    assert action("http://api.test/?mode=faster&n=3") == "block"
    assert action("http://api.test/?mode=slow&n=3") == "allow"
    assert action("http://api.test/?mode=fast&n=1") == "allow"
