"""JWKS from an https URL: fetched through real TLS, cached, refetched on an unknown kid."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator

import pytest
import requests

from addons.core.rulefile import RuleFileError
from addons.identity.jwks import JwksCache, JwksUnavailable
from addons.policy.engine import compile_policy
from tests.support import certs
from tests.support.jwtkeys import AUDIENCE, ISSUER, jwks, rsa_key
from tests.support.module_servers import tls_server
from tests.support.upstream import Canned, UpstreamServer


@pytest.fixture
def idp(pki: certs.TestPki) -> Iterator[UpstreamServer]:
    """An identity provider's key endpoint, over HTTPS with the test CA."""
    server = tls_server(pki)
    yield server
    server.stop()


def fetches(server: UpstreamServer) -> int:
    return sum(1 for r in server.received if r.path == "/jwks")


def test_cache_refetches_only_for_unknown_kids(idp, pki, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))  # how operators trust a private IdP CA
    first, second = rsa_key("k1"), rsa_key("k2")
    idp.routes["/jwks"] = Canned(200, jwks(first), {"Content-Type": "application/json"})
    cache = JwksCache(idp.url("/jwks"), None, ("RS256",), min_refresh=0, ttl=3600)

    async def scenario() -> None:
        assert (await cache.key_for("k1")) is not None
        assert (await cache.key_for("k1")) is not None
        assert fetches(idp) == 1  # cached
        idp.routes["/jwks"] = Canned(200, jwks(first, second))  # the IdP rotates keys
        assert (await cache.key_for("k2")) is not None
        assert fetches(idp) == 2
        assert (await cache.key_for("nope")) is None
        assert fetches(idp) == 3

    asyncio.run(scenario())


def test_unknown_kids_cannot_make_the_gateway_hammer_the_idp(idp, pki, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
    idp.routes["/jwks"] = Canned(200, jwks(rsa_key("k1")))
    cache = JwksCache(idp.url("/jwks"), None, ("RS256",), min_refresh=60, ttl=3600)

    async def scenario() -> None:
        for i in range(20):
            assert (await cache.key_for(f"unknown-{i}")) is None

    asyncio.run(scenario())
    assert fetches(idp) == 1


def test_untrusted_or_broken_key_endpoints_fail_closed(idp, pki, monkeypatch):
    cache = JwksCache(idp.url("/jwks"), None, ("RS256",), min_refresh=0, ttl=3600)
    with pytest.raises(JwksUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(cache.key_for("k1"))  # the test CA is not trusted by default
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
    idp.routes["/jwks"] = Canned(200, {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]})
    with pytest.raises(JwksUnavailable, match="no usable key"):
        asyncio.run(cache.key_for("k1"))  # an HMAC secret is never a verification key


def test_jwks_must_be_a_file_or_https(tmp_path):
    with pytest.raises(RuleFileError) as error:
        compile_policy(textwrap.dedent(f"""\
            version: 1
            jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "http://idp.test/jwks"}}
        """), "rules.yaml", tmp_path)
    assert "rules.yaml:2:" in str(error.value) and "https:// URL" in str(error.value)
    with pytest.raises(RuleFileError, match="cannot read JWKS file"):
        compile_policy('version: 1\njwt: {issuer: x, audience: y, jwks: missing.json}\n', "r.yaml", tmp_path)


def test_gateway_verifies_jwts_against_a_jwks_url(idp, pki, start_gateway, upstream):
    key = rsa_key("url-key")
    idp.routes["/jwks"] = Canned(200, jwks(key))
    gateway = start_gateway(f"""
        version: 1
        jwt:
          issuer: {ISSUER}
          audience: {AUDIENCE}
          jwks: {idp.url("/jwks")}
          jwks_refresh_interval: 0
    """, env={"SSL_CERT_FILE": str(pki.ca_cert)})

    def call(token: str) -> int:
        return requests.get(upstream.url("/x"), headers={"Proxy-Authorization": f"Bearer {token}"},
                            proxies={"http": gateway.proxy_url}, timeout=10).status_code

    assert call(key.token()) == 200
    rotated = rsa_key("rotated")
    idp.routes["/jwks"] = Canned(200, jwks(key, rotated))
    assert call(rotated.token()) == 200  # unknown kid: refetched, then accepted
    assert call(rsa_key("never-published").token()) == 407
    assert fetches(idp) == 3
