"""The data path end to end: a real gateway subprocess, a real upstream, real clients.

Two gateways serve the whole module (a start costs a second or two). One has a rules
file that combines what most tests need, each test on hosts of its own: ``secure.test``
has verification off, ``localhost`` over TLS is verified against the system's CAs (the
test certificate names it, but its CA is unknown there), and ``api.example.test`` is
pinned by ``--resolve``. The other adds ``ca_bundle`` (the test CA) for ``localhost``:
a gateway trusts an upstream CA bundle for every host, so it cannot share a process with
the tests that need an untrusted certificate.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
import requests

from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401

RULES = """
    version: 1
    default: allow
    rules:
      - name: no-table-deletes
        match: {method: [DELETE, PUT], path: "/v1/tables/**"}
        action: block
        reason: "Agents may not delete tables"
      - name: no-big-refunds
        match: {method: POST, path: /v1/refunds, json: {"$.amount": {gt: 1000}}}
        action: block
        reason: "Refunds over 1000 need a person"
"""

#: The rules of the module's main gateway: RULES, the upstream trust settings and the pinned name's rule.
MODULE_RULES = RULES + """
      - {name: no-writes, match: {host: api.example.test, method: POST}, action: block}
    upstreams:
      - host: secure.test
        verify: false
        address: 127.0.0.1
"""


@pytest.fixture(scope="module")
def gateway(module_gateway):
    return module_gateway(MODULE_RULES, "--resolve", "API.example.test=127.0.0.1")


@pytest.fixture(scope="module")
def trusting_gateway(module_gateway, pki):
    return module_gateway(MODULE_RULES + f"""
      - host: localhost
        ca_bundle: {pki.ca_cert}
    """)


def test_allowed_request_passes_unchanged_and_is_labelled(gateway, use_gateway, upstream):
    use_gateway(gateway)
    response = requests.post(
        upstream.url("/v1/refunds?order=7"),
        json={"amount": 10, "note": "ünïcode"},
        headers={"X-Custom": "kept"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["X-Portcullis-Decision"] == "allowed"
    (seen,) = upstream.received
    assert seen.method == "POST"
    assert seen.path == "/v1/refunds?order=7"
    assert seen.headers["x-custom"] == "kept"
    assert seen.json() == {"amount": 10, "note": "ünïcode"}


def test_blocked_request_never_reaches_upstream(gateway, use_gateway, upstream):
    use_gateway(gateway)
    response = httpx.Client(trust_env=True).delete(upstream.url("/v1//tables/./users"), timeout=10)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-portcullis-decision"] == "blocked"
    body = response.json()
    assert body == {
        "error": "blocked_by_policy",
        "rule": "no-table-deletes",
        "reason": "Agents may not delete tables",
        "flow_id": body["flow_id"],
    }
    assert len(body["flow_id"]) == 36
    assert upstream.received == []


def test_json_condition_blocks_only_matching_bodies(gateway, use_gateway, upstream):
    use_gateway(gateway)
    big = requests.post(upstream.url("/v1/refunds"), json={"amount": 5000}, timeout=10)
    small = requests.post(upstream.url("/v1/refunds"), json={"amount": 50}, timeout=10)
    # Issue 12: an untyped body that is not JSON may still be read by the upstream (it
    # used to pass as "not JSON"): the rule cannot judge it, so it is refused.
    untyped = requests.post(upstream.url("/v1/refunds"), data=b"amount=5000", timeout=10)
    assert (big.status_code, small.status_code, untyped.status_code) == (403, 200, 403)
    assert big.json()["rule"] == "no-big-refunds"
    assert untyped.json()["error"] == "policy_error"
    assert [r.body for r in upstream.received] == [b'{"amount": 50}']


def test_policy_error_blocks(gateway, use_gateway, upstream):
    use_gateway(gateway)
    mark = len(gateway.lines)
    too_deep = b"[" * 100_000 + b"]" * 100_000
    response = requests.post(
        upstream.url("/v1/refunds"), data=too_deep, headers={"Content-Type": "application/json"}, timeout=20
    )
    assert response.status_code == 403
    assert response.json()["error"] == "policy_error"
    assert upstream.received == []
    gateway.wait_for_output_after(mark, "policy evaluation failed")


def test_https_is_intercepted_and_upstream_verified(trusting_gateway, use_gateway, tls_upstream):
    use_gateway(trusting_gateway)  # localhost: ca_bundle is the test CA
    ok = requests.get(tls_upstream.url("/v1/tables/users", host="localhost"), timeout=10)
    assert ok.status_code == 200
    assert ok.headers["X-Portcullis-Decision"] == "allowed"
    blocked = requests.delete(tls_upstream.url("/v1/tables/users", host="localhost"), timeout=10)
    assert blocked.status_code == 403
    assert blocked.json()["rule"] == "no-table-deletes"
    assert [r.method for r in tls_upstream.received] == ["GET"]


def test_untrusted_upstream_certificate_is_refused(gateway, use_gateway, tls_upstream):
    use_gateway(gateway)  # no ca_bundle: the system's CAs, which lack the test CA
    response = requests.get(tls_upstream.url("/", host="localhost"), timeout=10)
    assert response.status_code == 502
    assert tls_upstream.received == []


def test_curl_as_outside_client(gateway, upstream):
    env = {"PATH": "/usr/bin:/bin", **gateway.agent_env()}
    result = subprocess.run(
        ["curl", "-s", "-X", "DELETE", upstream.url("/v1/tables/t")],
        env=env, capture_output=True, text=True, timeout=20, check=True,
    )
    assert json.loads(result.stdout)["error"] == "blocked_by_policy"


def test_verification_can_be_switched_off_per_host(gateway, use_gateway, tls_upstream):
    use_gateway(gateway)  # secure.test: verify false; localhost: verified against the system's CAs
    insecure = requests.get(tls_upstream.url("/x", host="secure.test"), timeout=10)
    still_verified = requests.get(tls_upstream.url("/y", host="localhost"), timeout=10)
    assert (insecure.status_code, still_verified.status_code) == (200, 502)
    assert [r.path for r in tls_upstream.received] == ["/x"]


def test_resolve_pins_a_name_to_an_address_and_rules_see_the_name(gateway, use_gateway, upstream):
    use_gateway(gateway)  # --resolve API.example.test=127.0.0.1; rule no-writes names api.example.test
    read = requests.get(upstream.url("/v1/x", host="api.example.test"), timeout=10)
    write = requests.post(upstream.url("/v1/x", host="api.example.test"), json={}, timeout=10)
    assert (read.status_code, write.status_code) == (200, 403)
    assert upstream.received[0].headers["host"] == f"api.example.test:{upstream.port}"
