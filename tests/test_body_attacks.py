"""Hostile bodies against `json` conditions and masks: never crash, never hang, and never
let through a request that a correct parse would have blocked (fail closed)."""

from __future__ import annotations

import gzip
import json
import textwrap
import time
import zlib

import pytest
import requests

from addons.core.jsonbody import (
    MAX_VARIANTS,
    NOT_JSON,
    UninspectableBody,
    Variants,
    decode_bounded,
    parse_strict,
)
from addons.core.synthetic import make_flow
from addons.policy.conditions import EvaluationError, RequestView
from addons.policy.engine import compile_policy
from tests.support.hardening import shared_gateway
from tests.support.module_servers import module_upstream  # noqa: F401
from tests.support.upstream import Canned

RULES = """
    version: 1
    default: allow
    rules:
      - name: no-big-refunds
        match: {method: POST, path: /v1/refunds, json: {"$.amount": {gt: 1000}}}
        action: block
      - name: mask-ssn
        match: {path: "/v1/people/**"}
        mask: ["$..ssn"]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    with shared_gateway(tmp_path_factory.mktemp("bodies"), confdir, RULES) as gw:
        yield gw


@pytest.fixture
def post(gateway, upstream):
    proxies = {"http": gateway.proxy_url}

    def send(path: str, body: bytes, content_type: str = "application/json", **headers: str):
        return requests.post(upstream.url(path), data=body, proxies=proxies, timeout=60,
                             headers={"Content-Type": content_type, **headers})

    return send


def reached(upstream, body: bytes) -> bool:
    return any(r.body == body for r in upstream.received)


# --- through the gateway ------------------------------------------------------------

BLOCKED_BODIES = {
    "duplicate key, big last": b'{"amount": 5, "amount": 5000}',
    "duplicate key, big first": b'{"amount": 5000, "amount": 5}',
    "trailing comma": b'{"amount": 5000,}',
    "single quotes": b"{'amount': 5000}",
    "comment": b'{"amount": 5000 /* hi */}',
    "NaN": b'{"amount": NaN}',
    "Infinity": b'{"amount": Infinity}',
    "huge integer": b'{"amount": 1' + b"0" * 5000 + b"}",
    "invalid UTF-8": b'{"amount": 5000, "note": "\xff\xfe"}',
    "truncated": b'{"amount": 5000',
    "100,000 levels deep": b'{"amount": 5000, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("name", list(BLOCKED_BODIES))
def test_unevaluable_or_ambiguous_bodies_are_blocked(post, upstream, name):
    body = BLOCKED_BODIES[name]
    response = post("/v1/refunds", body)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "policy_error"
    assert not reached(upstream, body)


def test_duplicates_elsewhere_do_not_hide_a_match(post, upstream):
    body = b'{"amount": 5000, "x": {"a": 1, "a": 2}}'
    response = post("/v1/refunds", body)
    assert response.status_code == 403
    assert response.json()["error"] == "blocked_by_policy"


def test_float_overflow_counts_as_a_big_number(post, upstream):
    response = post("/v1/refunds", b'{"amount": 1e999}')
    assert response.status_code == 403
    assert response.json()["error"] == "blocked_by_policy"


def test_duplicates_that_agree_are_fine(post, upstream):
    body = b'{"amount": 5, "amount": 6, "note": "a", "note": "b"}'
    assert post("/v1/refunds", body).status_code == 200
    assert reached(upstream, body)


def test_an_allow_rule_cannot_be_satisfied_by_one_duplicate():
    # A lenient upstream would read the last amount (5000); the allow rule saw 50 too.
    policy = compile_policy(textwrap.dedent("""
        version: 1
        default: block
        rules:
          - name: small-transfers
            match: {method: POST, path: /v1/transfers, json: {"$.amount": {lte: 100}}}
            action: allow
    """))
    body = b'{"amount": 50, "amount": 5000}'
    flow = make_flow("POST", "http://bank.test/v1/transfers", {"Content-Type": "application/json"}, body)
    with pytest.raises(EvaluationError, match="duplicate keys"):
        policy.evaluate(RequestView(flow))
    flow = make_flow("POST", "http://bank.test/v1/transfers", {}, b'{"amount": 50, "amount": 60}')
    assert policy.evaluate(RequestView(flow)).action == "allow"


def test_form_bodies_are_fields_too(post, upstream):
    # Issue 12: a form post is read into the same fields as JSON (addons.policy.fields); it used
    # to be "not JSON" and walked past the rule.
    assert post("/v1/refunds", b"amount=5000", "application/x-www-form-urlencoded").status_code == 403
    assert post("/v1/refunds", b"amount=50", "application/x-www-form-urlencoded").status_code == 200


def test_declared_json_that_does_not_parse_is_blocked(post, upstream):
    assert post("/v1/refunds", b"amount=5000", "application/json").status_code == 403
    assert post("/v1/refunds", b"amount=5000", "application/vnd.api+json").status_code == 403


def test_compressed_bodies_are_inspected_and_bombs_are_refused(post, upstream):
    hidden = gzip.compress(b'{"amount": 5000}')
    assert post("/v1/refunds", hidden, **{"Content-Encoding": "gzip"}).status_code == 403
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]", compresslevel=9)
    started = time.monotonic()
    response = post("/v1/refunds", bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 403
    assert time.monotonic() - started < 30  # bounded work, not a hang (generous on CI)
    assert post("/v1/refunds", b"\x00garbage", **{"Content-Encoding": "br"}).status_code == 403


def test_a_50_mib_body_is_refused_for_json_rules_and_forwarded_elsewhere(post, upstream):
    items = b",".join([b'{"a": 1}'] * (50 * 1024 * 1024 // 9))
    big = b'{"amount": 5000, "items": [' + items + b"]}"
    assert len(big) > 50 * 1024 * 1024
    assert post("/v1/refunds", big).status_code == 403
    # No json condition applies on this path: it is forwarded intact.
    response = post("/v1/uploads", big)
    assert response.status_code == 200
    assert len(upstream.received[-1].body) == len(big)


HOSTILE_RESPONSES = {
    "deep": b'{"ssn": "123-45-6789", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "duplicates": b'{"ssn": "masked-anyway", "ssn": "123-45-6789"}',
    "invalid UTF-8": b'{"ssn": "123-45-6789", "n": "\xff"}',
    "NaN": b'{"ssn": "123-45-6789", "n": NaN}',
}


@pytest.mark.parametrize("name", list(HOSTILE_RESPONSES))
def test_masks_never_leak_hostile_response_bodies(gateway, upstream, name):
    upstream.routes["/v1/people/7"] = Canned(200, HOSTILE_RESPONSES[name],
                                             {"Content-Type": "application/json"})
    response = requests.get(upstream.url("/v1/people/7"), proxies={"http": gateway.proxy_url},
                            timeout=60)
    assert b"123-45-6789" not in response.content
    assert response.status_code in (200, 502)


def test_gateway_survived_everything(gateway, post):
    assert post("/v1/refunds", b'{"amount": 10}').status_code == 200
    assert gateway.process.poll() is None
    assert "Traceback" not in gateway.output


# --- the parser itself --------------------------------------------------------------


def test_strict_parse_gives_every_reading_of_duplicates():
    document = parse_strict(b'{"a": 1, "a": 2, "b": {"c": 3, "c": 4}}')
    assert isinstance(document, Variants)
    assert sorted(json.dumps(d, sort_keys=True) for d in document.documents) == sorted(
        json.dumps({"a": a, "b": {"c": c}}, sort_keys=True) for a in (1, 2) for c in (3, 4)
    )
    assert parse_strict(b'{"a": 1}') == {"a": 1}


def test_too_many_readings_are_refused():
    many = b"{" + b",".join(b'"k%d": 1, "k%d": 2' % (i, i) for i in range(7)) + b"}"
    assert MAX_VARIANTS < 2**7
    with pytest.raises(UninspectableBody):
        parse_strict(many)


@pytest.mark.parametrize("body", [b"NaN", b"-Infinity", b"[1, 2", b"\xff", b"{" * 5000])
def test_strict_parse_refuses(body):
    with pytest.raises(UninspectableBody):
        parse_strict(body)


def test_bounded_decoding():
    data = b'{"x": 1}'
    assert decode_bounded(gzip.compress(data), "gzip", 100) == data
    assert decode_bounded(zlib.compress(data), "deflate", 100) == data
    raw = zlib.compressobj(wbits=-15)
    assert decode_bounded(raw.compress(data) + raw.flush(), "deflate", 100) == data
    assert decode_bounded(gzip.compress(gzip.compress(data)), "gzip, gzip", 100) == data
    with pytest.raises(UninspectableBody):
        decode_bounded(gzip.compress(b"0" * 1000), "gzip", 100)
    with pytest.raises(UninspectableBody):
        decode_bounded(gzip.compress(data)[:-5], "gzip", 100)
    with pytest.raises(UninspectableBody):
        decode_bounded(data, "zstd", 100)
    assert NOT_JSON is not None
