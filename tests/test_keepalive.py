"""Kept-alive agents and pinned upstreams (issue 17): every request is answered and the
gateway reuses its upstream connections, counted where they arrive (the upstream).

The upstreams run on 127.0.0.1 and are reached as ``api.demo.test``, pinned with
``upstreams: address:`` exactly as rules/default.yaml does; the name has no DNS entry,
so every request here also proves the pin took. Before the fix, the sixth request on one
agent connection never reached the upstream.
"""

from __future__ import annotations

import threading

import duckdb
import pytest
import requests

from tests.support.hardening import shared_gateway
from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401
from tests.support.upstream import UpstreamServer

HOST = "api.demo.test"
REQUESTS = 200  # on one session
SESSIONS = 16
SESSION_REQUESTS = 50  # on each of the concurrent sessions: 800 per scheme keeps this file fast
ANSWERED: list[int] = []  # requests answered in this module, checked against the recording


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir, pki):
    rules = f"""
        version: 1
        default: allow
        upstreams:
          - host: {HOST}
            address: 127.0.0.1
            ca_bundle: {pki.ca_cert}
    """
    directory = tmp_path_factory.mktemp("keepalive")
    with shared_gateway(directory, confdir, rules, "--upstream-timeout", "5") as gw:
        yield gw


def session_for(gateway) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": gateway.proxy_url, "https": gateway.proxy_url}
    session.verify = str(gateway.ca_cert)
    return session


def run_session(gateway, server: UpstreamServer, count: int, tag: str) -> list[str]:
    """count requests on one kept-alive session; the problems seen (none expected)."""
    problems = []
    with session_for(gateway) as session:
        for i in range(count):
            path = f"/v1/tables?{tag}-{i}"
            try:
                response = session.get(server.url(path, host=HOST), timeout=10)
            except requests.RequestException as exc:
                problems.append(f"{tag} #{i}: {exc.__class__.__name__}: {exc}")
                break  # the session is stuck: the rest would only repeat it
            if response.status_code != 200 or response.json().get("path") != path:
                problems.append(f"{tag} #{i}: {response.status_code} {response.text[:200]}")
            else:
                ANSWERED.append(1)
    return problems


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_one_session_gets_every_answer_over_one_upstream_connection(gateway, upstream, tls_upstream, scheme):
    server = upstream if scheme == "http" else tls_upstream
    before = server.accepted
    assert run_session(gateway, server, REQUESTS, scheme) == []
    assert server.accepted - before == 1


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_concurrent_sessions_each_reuse_their_upstream_connection(gateway, upstream, tls_upstream, scheme):
    server = upstream if scheme == "http" else tls_upstream
    before = server.accepted
    problems: list[str] = []

    def agent(n: int) -> None:
        problems.extend(run_session(gateway, server, SESSION_REQUESTS, f"{scheme}-s{n}"))

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert problems == []
    assert not any(thread.is_alive() for thread in threads)
    # One agent connection per session, and one upstream connection for each of them.
    assert server.accepted - before == SESSIONS


def test_every_answered_request_was_recorded_once(gateway):
    gateway.stop()
    assert "cannot cut" not in gateway.output and "Traceback" not in gateway.output
    with duckdb.connect(str(gateway.db), read_only=True) as con:
        (count,) = con.execute(
            "SELECT count(*) FROM flows WHERE host = ? AND status_code = 200", [HOST]).fetchone()
    assert count == len(ANSWERED) == 2 * (REQUESTS + SESSIONS * SESSION_REQUESTS)


def test_pinned_resolver_answers_only_pinned_names_and_uninstalls():
    import asyncio
    import socket

    from addons.upstreams.addon import UpstreamsAddon

    async def check() -> None:
        loop = asyncio.get_running_loop()
        original = loop.getaddrinfo
        addon = UpstreamsAddon()
        addon.pinned = {"api.demo.test": "127.0.0.1"}
        resolver = addon.resolver
        resolver.install(loop)
        infos = await loop.getaddrinfo("API.demo.test.", 8900, type=socket.SOCK_STREAM)
        assert {info[4] for info in infos} == {("127.0.0.1", 8900)}
        infos = await loop.getaddrinfo("localhost", 1, family=socket.AF_INET, type=socket.SOCK_STREAM)
        assert {info[4][0] for info in infos} == {"127.0.0.1"}  # not pinned: the system's answer
        resolver.uninstall()
        assert loop.getaddrinfo == original

    asyncio.run(check())


def test_resolve_option_needs_an_ip_address():
    from mitmproxy import exceptions

    from addons.upstreams.addon import parse_resolve

    assert parse_resolve(["API.example.test=127.0.0.1"]) == {"api.example.test": "127.0.0.1"}
    with pytest.raises(exceptions.OptionsError, match="not an IP address"):
        parse_resolve(["api.example.test=localhost"])
