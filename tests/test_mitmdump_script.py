"""The same addons load into plain mitmproxy: mitmdump -s addons/portcullis.py.

One mitmdump for the module (a start costs a second or two), with stream_large_bodies
set: small requests are not affected by it, large ones are what the second test is about.
"""

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


@pytest.fixture(scope="module")
def proxies(tmp_path_factory, confdir):
    directory = tmp_path_factory.mktemp("mitmdump")
    rules = directory / "rules.yaml"
    rules.write_text(RULES)
    with mitmdump(confdir, rules, f"portcullis_db={directory / 'r.duckdb'}", "stream_large_bodies=1k") as proxies:
        yield proxies


def test_mitmdump_loads_the_portcullis_addons(proxies, upstream):
    allowed = requests.get(upstream.url("/x"), proxies=proxies, timeout=5)
    blocked = requests.delete(upstream.url("/x"), proxies=proxies, timeout=5)
    assert allowed.status_code == 200
    assert allowed.headers["X-Portcullis-Decision"] == "allowed"
    assert blocked.status_code == 403
    assert blocked.json()["rule"] == "no-deletes"
    assert [r.method for r in upstream.received] == ["GET"]


def test_bodies_mitmproxy_would_stream_are_refused_not_forwarded_unchecked(proxies, upstream):
    """Under stream_large_bodies a large body is sent upstream before rules could see it."""
    small = requests.post(upstream.url("/refunds"), json={"amount": 1}, proxies=proxies, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.post(upstream.url("/refunds"), json={"amount": 1000, "pad": "x" * 5000},
                      proxies=proxies, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.post(upstream.url("/refunds"), data=iter([b'{"amount": 1000}']), proxies=proxies, timeout=5)
    after = requests.get(upstream.url("/still-serving"), proxies=proxies, timeout=5)
    assert (small.status_code, after.status_code) == (200, 200)
    assert [r.path for r in upstream.received] == ["/refunds", "/still-serving"]
