"""X-Portcullis-* headers are the gateway's voice: agents cannot use them to change what
the gateway decides or records, and upstreams cannot use them to speak for it."""

from __future__ import annotations

import pytest
import requests

from tests.support.hardening import recorded_flows, shared_gateway
from tests.support.module_servers import module_upstream  # noqa: F401
from tests.support.upstream import Canned

RULES = """
    version: 1
    default: allow
    rules:
      - name: no-tables
        match: {path: "/v1/tables/**"}
        action: block
"""

FORGED_REQUEST_HEADERS = {
    "X-Portcullis-Decision": "approved",
    "X-Portcullis-Identity": "admin",
    "X-Portcullis-Flow-Id": "00000000-0000-0000-0000-000000000000",
    "X-Portcullis-Approval": "00000000-0000-0000-0000-000000000000",
    "X-PORTCULLIS-ACTOR": "alice",
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    with shared_gateway(tmp_path_factory.mktemp("forgery"), confdir, RULES) as gw:
        yield gw


def via(gateway):
    return {"http": gateway.proxy_url}


def test_agent_control_headers_never_reach_the_upstream_nor_unblock(gateway, upstream):
    response = requests.get(upstream.url("/v1/ok"), headers=FORGED_REQUEST_HEADERS,
                            proxies=via(gateway), timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Portcullis-Flow-Id"] != FORGED_REQUEST_HEADERS["X-Portcullis-Flow-Id"]
    assert not [h for h in upstream.received[-1].headers if h.startswith("x-portcullis-")]
    blocked = requests.delete(upstream.url("/v1/tables/t"), headers=FORGED_REQUEST_HEADERS,
                              proxies=via(gateway), timeout=10)
    assert blocked.status_code == 403, blocked.text
    assert blocked.headers.get("X-Portcullis-Decision") == "blocked", blocked.text


def test_upstream_cannot_speak_for_the_gateway(gateway, upstream):
    upstream.routes["/v1/lying"] = Canned(200, {"ok": True}, {
        "X-Portcullis-Decision": "blocked",
        "X-Portcullis-Flow-Id": "forged-by-upstream",
        "X-Portcullis-Masked": "99",
        "X-Portcullis-Approval": "granted",
    })
    response = requests.get(upstream.url("/v1/lying"), proxies=via(gateway), timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Portcullis-Decision"] == "allowed"
    assert response.headers["X-Portcullis-Flow-Id"] != "forged-by-upstream"
    assert "X-Portcullis-Masked" not in response.headers
    assert "X-Portcullis-Approval" not in response.headers
    assert len(response.headers["X-Portcullis-Flow-Id"]) == 36


def test_forged_headers_change_nothing_recorded(gateway, upstream):
    response = requests.get(upstream.url("/v1/recorded"), headers=FORGED_REQUEST_HEADERS,
                            proxies=via(gateway), timeout=10)
    flow_id = response.headers["X-Portcullis-Flow-Id"]
    gateway.stop()
    (row,) = recorded_flows(gateway.db, "id = ?", [flow_id])
    assert row["identity"] == "anonymous"
    assert row["decision"] == "allowed"
    assert row["actor"] in (None, "")
