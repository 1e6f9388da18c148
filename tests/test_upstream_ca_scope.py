"""An ``upstreams:`` entry's ``ca_bundle`` vouches for its own host only (issue 18/12).

It used to be merged into one trust file for every upstream, so a private CA meant for
one internal host could vouch for any other host. Two real HTTPS upstreams on
127.0.0.1, certificates from two private CAs; a host whose certificate is signed by
another entry's CA must fail verification with the JSON 502 upstream error.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import certs
from tests.support.gateway import GatewayProcess
from tests.support.module_servers import tls_server
from tests.support.upstream import Canned, UpstreamServer

RULES = """\
    version: 1
    default: allow
    upstreams:
      - host: api.demo.test
        address: 127.0.0.1
        ca_bundle: {ca_a}
      - host: secure.test
        address: 127.0.0.1
        ca_bundle: {ca_b}
"""


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[certs.TestPki, certs.TestPki]:
    return (certs.make_pki(tmp_path_factory.mktemp("ca_a")), certs.make_pki(tmp_path_factory.mktemp("ca_b")))


@pytest.fixture(scope="module")
def servers(pkis) -> Iterator[tuple[UpstreamServer, UpstreamServer]]:
    a, b = tls_server(pkis[0]), tls_server(pkis[0])  # B presents a certificate from A's CA
    for server in (a, b):
        server.routes["/hello"] = Canned(200, b'{"ok": true}', {"Content-Type": "application/json"})
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pkis, confdir: Path) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("ca_scope")
    (home / "rules.yaml").write_text(textwrap.dedent(RULES.format(ca_a=pkis[0].ca_cert, ca_b=pkis[1].ca_cert)))
    process = GatewayProcess(home / "rules.yaml", confdir).start()
    yield process
    process.stop_soon()


def call(gateway: GatewayProcess, url: str) -> requests.Response:
    proxies = {"http": gateway.proxy_url, "https": gateway.proxy_url}
    return requests.get(url, proxies=proxies, verify=str(gateway.ca_cert), timeout=10)


def test_a_bundle_vouches_for_its_own_host(gateway, servers):
    response = call(gateway, f"https://api.demo.test:{servers[0].port}/hello")
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True}


def test_a_bundle_does_not_vouch_for_another_host(gateway, servers):
    response = call(gateway, f"https://secure.test:{servers[1].port}/hello")
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "upstream_tls_error", body
    assert body["flow_id"], body
    assert servers[1].received == []
