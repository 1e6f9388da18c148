"""The data path end to end: a real gateway subprocess, a real upstream, real clients."""

from __future__ import annotations

import json
import subprocess

import httpx
import requests

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


def test_allowed_request_passes_unchanged_and_is_labelled(start_gateway, use_gateway, upstream):
    gateway = start_gateway(RULES)
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


def test_blocked_request_never_reaches_upstream(start_gateway, use_gateway, upstream):
    gateway = start_gateway(RULES)
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


def test_json_condition_blocks_only_matching_bodies(start_gateway, use_gateway, upstream):
    gateway = start_gateway(RULES)
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


def test_policy_error_blocks(start_gateway, use_gateway, upstream):
    gateway = start_gateway(RULES)
    use_gateway(gateway)
    too_deep = b"[" * 100_000 + b"]" * 100_000
    response = requests.post(
        upstream.url("/v1/refunds"), data=too_deep, headers={"Content-Type": "application/json"}, timeout=20
    )
    assert response.status_code == 403
    assert response.json()["error"] == "policy_error"
    assert upstream.received == []
    gateway.wait_for_output("policy evaluation failed")


def test_https_is_intercepted_and_upstream_verified(start_gateway, use_gateway, tls_upstream, pki):
    rules = RULES + f"""
    upstreams:
      - host: localhost
        ca_bundle: {pki.ca_cert}
    """
    gateway = start_gateway(rules)
    use_gateway(gateway)
    ok = requests.get(tls_upstream.url("/v1/tables/users", host="localhost"), timeout=10)
    assert ok.status_code == 200
    assert ok.headers["X-Portcullis-Decision"] == "allowed"
    blocked = requests.delete(tls_upstream.url("/v1/tables/users", host="localhost"), timeout=10)
    assert blocked.status_code == 403
    assert blocked.json()["rule"] == "no-table-deletes"
    assert [r.method for r in tls_upstream.received] == ["GET"]


def test_untrusted_upstream_certificate_is_refused(start_gateway, use_gateway, tls_upstream):
    gateway = start_gateway(RULES)
    use_gateway(gateway)
    response = requests.get(tls_upstream.url("/", host="localhost"), timeout=10)
    assert response.status_code == 502
    assert tls_upstream.received == []


def test_curl_as_outside_client(start_gateway, upstream):
    gateway = start_gateway(RULES)
    env = {"PATH": "/usr/bin:/bin", **gateway.agent_env()}
    result = subprocess.run(
        ["curl", "-s", "-X", "DELETE", upstream.url("/v1/tables/t")],
        env=env, capture_output=True, text=True, timeout=20, check=True,
    )
    assert json.loads(result.stdout)["error"] == "blocked_by_policy"


def test_verification_can_be_switched_off_per_host(start_gateway, use_gateway, tls_upstream):
    gateway = start_gateway(RULES + """
    upstreams:
      - host: secure.test
        verify: false
        address: 127.0.0.1
    """)
    use_gateway(gateway)
    insecure = requests.get(tls_upstream.url("/x", host="secure.test"), timeout=10)
    still_verified = requests.get(tls_upstream.url("/y", host="localhost"), timeout=10)
    assert (insecure.status_code, still_verified.status_code) == (200, 502)
    assert [r.path for r in tls_upstream.received] == ["/x"]


def test_resolve_pins_a_name_to_an_address_and_rules_see_the_name(start_gateway, use_gateway, upstream):
    rules = """
        version: 1
        rules:
          - {name: no-writes, match: {host: api.example.test, method: POST}, action: block}
    """
    gateway = start_gateway(rules, "--resolve", "API.example.test=127.0.0.1")
    use_gateway(gateway)
    read = requests.get(upstream.url("/v1/x", host="api.example.test"), timeout=10)
    write = requests.post(upstream.url("/v1/x", host="api.example.test"), json={}, timeout=10)
    assert (read.status_code, write.status_code) == (200, 403)
    assert upstream.received[0].headers["host"] == f"api.example.test:{upstream.port}"
