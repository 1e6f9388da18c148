"""The same addons load into plain mitmproxy: mitmdump -s addons/portcullis.py."""

from __future__ import annotations

import pytest
import requests

from tests.support.mitmdump import mitmdump

RULES = """\
version: 1
rules:
  - name: no-deletes
    match: {method: DELETE}
    action: block
    reason: "read-only agent"
  - name: no-big-refunds
    match: {path: /refunds, json: {"$.amount": {gt: 100}}}
    action: block
"""


def test_mitmdump_loads_the_portcullis_addons(tmp_path, confdir, upstream):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with mitmdump(confdir, rules, f"portcullis_db={tmp_path / 'r.duckdb'}") as proxies:
        allowed = requests.get(upstream.url("/x"), proxies=proxies, timeout=5)
        blocked = requests.delete(upstream.url("/x"), proxies=proxies, timeout=5)
    assert allowed.status_code == 200
    assert allowed.headers["X-Portcullis-Decision"] == "allowed"
    assert blocked.status_code == 403
    assert blocked.json()["rule"] == "no-deletes"
    assert [r.method for r in upstream.received] == ["GET"]


def test_bodies_mitmproxy_would_stream_are_refused_not_forwarded_unchecked(tmp_path, confdir, upstream):
    """Under stream_large_bodies a large body is sent upstream before rules could see it."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    options = (f"portcullis_db={tmp_path / 'r.duckdb'}", "stream_large_bodies=1k")
    with mitmdump(confdir, rules, *options) as proxies:
        small = requests.post(upstream.url("/refunds"), json={"amount": 1}, proxies=proxies, timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.post(upstream.url("/refunds"), json={"amount": 1000, "pad": "x" * 5000},
                          proxies=proxies, timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.post(upstream.url("/refunds"), data=iter([b'{"amount": 1000}']), proxies=proxies, timeout=5)
        after = requests.get(upstream.url("/still-serving"), proxies=proxies, timeout=5)
    assert (small.status_code, after.status_code) == (200, 200)
    assert [r.path for r in upstream.received] == ["/refunds", "/still-serving"]
