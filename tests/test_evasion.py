"""Spelling tricks an agent might use to dodge a rule: every spelling of a blocked path
or host is blocked, and never reaches the upstream. Raw sockets, so that nothing in a
client library normalises the request before the gateway sees it."""

from __future__ import annotations

import pytest

from addons.core.synthetic import make_flow
from addons.guards.hostcheck import mismatch
from tests.support.hardening import (
    parse_response,
    raw_request,
    read_response,
    shared_gateway,
    tunnel,
)
from tests.support.module_servers import module_tls_upstream, module_upstream  # noqa: F401

RULES = """
    version: 1
    default: allow
    upstreams:
      - host: "*.demo.test"
        ca_bundle: {ca}
      - host: "127.0.0.1"
        ca_bundle: {ca}
    rules:
      - name: no-tables
        match: {{path: "/v1/tables/**"}}
        action: block
      - name: no-secret-host
        match: {{host: secret.demo.test}}
        action: block
      - name: no-loopback-admin
        match: {{host: 127.0.0.1, path: "/admin/**"}}
        action: block
      - name: no-idn-host
        match: {{host: "bücher.test"}}
        action: block
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir, pki):
    rules = RULES.format(ca=pki.ca_cert)
    pins = [f"--resolve={name}=127.0.0.1"
            for name in ("secret.demo.test", "public.demo.test", "xn--bcher-kva.test")]
    with shared_gateway(tmp_path_factory.mktemp("evasion"), confdir, rules, *pins) as gw:
        yield gw


def get(gateway, url: str, host: str | None = None, method: str = "GET"):
    host_header = host if host is not None else url.split("/")[2]
    data = f"{method} {url} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
    return raw_request(gateway.port, data.encode("utf-8", "surrogateescape"))


PATH_SPELLINGS = [
    "/v1/tables/users", "/v1//tables/users", "/v1/./tables/users", "/./v1/tables/users",
    "/v1/x/../tables/users", "/v1/x/%2e%2e/tables/users", "/v1/x/%2E%2E/tables/users",
    "/v1/%74ables/users", "/v1%2Ftables%2Fusers", "/v1%2ftables/users", "/V1/Tables/users",
    "/v1/TABLES", "/v1/tables", "/v1/tables/", "/v1/tables;jsessionid=1/users",
    "/v1\\tables\\users", "/v1/tables/users?x=/../../ok", "/v1/tables/users#frag",
]


@pytest.mark.parametrize("path", PATH_SPELLINGS)
def test_every_spelling_of_a_blocked_path_is_blocked(gateway, upstream, path):
    before = len(upstream.received)
    response = get(gateway, f"http://127.0.0.1:{upstream.port}{path}", method="DELETE")
    assert response.status == 403, (path, response)
    assert response.json()["rule"] == "no-tables"
    assert len(upstream.received) == before


def test_neighbouring_paths_are_not_blocked(gateway, upstream):
    for path in ["/v1/tablesx", "/v1/x/tables/users", "/v1/%252e%252e/tables"]:
        assert get(gateway, f"http://127.0.0.1:{upstream.port}{path}").status == 200, path


IP_SPELLINGS = ["127.0.0.1", "2130706433", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1",
                "127.000.000.001", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "127.0.0.1."]


@pytest.mark.parametrize("spelling", IP_SPELLINGS)
def test_every_spelling_of_a_blocked_address_is_blocked(gateway, upstream, spelling):
    before = len(upstream.received)
    response = get(gateway, f"http://{spelling}:{upstream.port}/admin/users")
    assert response.status == 403, (spelling, response)
    assert response.json()["rule"] == "no-loopback-admin"
    assert len(upstream.received) == before


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "[::ffff:127.0.0.1]"])
def test_odd_address_spellings_really_reach_the_address(gateway, upstream, spelling):
    # The control for the test above: these spellings do connect to 127.0.0.1, so
    # without normalisation the block would have been dodged.
    before = len(upstream.received)
    assert get(gateway, f"http://{spelling}:{upstream.port}/public").status == 200
    assert len(upstream.received) == before + 1


@pytest.mark.parametrize(("spelling", "status"), [
    ("secret.demo.test", 403), ("SECRET.Demo.TEST", 403), ("secret.demo.test.", 403),
    ("secret.demo.test..", 400),  # mitmproxy refuses this spelling outright
])
def test_every_spelling_of_a_blocked_host_is_blocked(gateway, upstream, spelling, status):
    before = len(upstream.received)
    response = get(gateway, f"http://{spelling}:{upstream.port}/x")
    assert response.status == status, (spelling, response)
    if status == 403:
        assert response.json()["rule"] == "no-secret-host"
    assert len(upstream.received) == before


def test_pinned_neighbour_host_is_allowed(gateway, upstream):
    assert get(gateway, f"http://public.demo.test:{upstream.port}/x").status == 200


def test_idna_spellings_of_a_blocked_host(gateway, upstream):
    before = len(upstream.received)
    assert get(gateway, f"http://xn--bcher-kva.test:{upstream.port}/").status == 403
    assert get(gateway, f"http://XN--BCHER-KVA.TEST:{upstream.port}/").status == 403
    # Raw UTF-8 in the request line: mitmproxy refuses it, and nothing is forwarded.
    assert get(gateway, f"http://bücher.test:{upstream.port}/").status in (400, 403)
    assert len(upstream.received) == before


def test_host_header_naming_another_host_is_refused(gateway, upstream):
    before = len(upstream.received)
    response = get(gateway, f"http://127.0.0.1:{upstream.port}/x", host="secret.demo.test")
    assert response.status == 400
    assert response.json()["error"] == "host_mismatch"
    # The same host in another spelling (and an explicit port) is fine.
    assert get(gateway, f"http://127.0.0.1:{upstream.port}/x", host=f"0x7f.1:{upstream.port}").status == 200
    assert len(upstream.received) == before + 1


def tls_get(gateway, target: str, sni: str | None, host: str, path: str = "/x"):
    with tunnel(gateway.port, target, sni, gateway.ca_cert) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return parse_response(read_response(sock))


def test_tls_server_name_or_host_naming_another_host_is_refused(gateway, tls_upstream):
    target = f"public.demo.test:{tls_upstream.port}"
    before = len(tls_upstream.received)
    assert tls_get(gateway, target, "public.demo.test", target).status == 200
    fronted = tls_get(gateway, target, "secret.demo.test", target)
    assert fronted.status == 400
    assert fronted.json()["error"] == "host_mismatch"
    assert tls_get(gateway, target, "public.demo.test", "secret.demo.test").status == 400
    assert tls_get(gateway, f"secret.demo.test:{tls_upstream.port}", "secret.demo.test",
                   "secret.demo.test").status == 403
    assert len(tls_upstream.received) == before + 1


def test_mismatch_rules():
    def flow(url: str, host: str):
        built = make_flow("GET", url)
        built.request.headers["Host"] = host  # make() writes the URL's host there
        return built

    assert mismatch(flow("http://api.example.com/", "API.Example.com.:80")) is None
    assert mismatch(flow("http://127.0.0.1:8080/", "2130706433:8080")) is None
    assert mismatch(flow("http://127.0.0.1:8080/", "[::ffff:127.0.0.1]:8080")) is None
    assert "names 'other.example.com'" in mismatch(flow("http://api.example.com/", "other.example.com"))
    assert mismatch(flow("http://api.example.com/", "api.example.com.evil.test")) is not None
    twice = flow("http://api.example.com/", "api.example.com")
    twice.request.headers.set_all("Host", ["api.example.com", "blocked.example.com"])
    assert mismatch(twice) is not None  # two Host headers: the upstream might read either
