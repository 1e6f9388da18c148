"""Agent identity end to end: a real gateway, real upstreams, credentials sent by real clients."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.cli import main
from tests.support import certs
from tests.support.gateway import GatewayProcess
from tests.support.jwtkeys import AUDIENCE, ISSUER, SigningKey, ec_key, jwks, rsa_key
from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401
from tests.support.recording_check import find_in_recording

BILLING_TOKEN = "billing-token-0123456789"
CI_TOKEN = "ci-token-9876543210"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {"rsa": rsa_key("rsa-1"), "ec": ec_key("ec-1"), "stranger": rsa_key("not-published")}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, SigningKey], pki: certs.TestPki) -> Path:
    directory = tmp_path_factory.mktemp("identity")
    (directory / "jwks.json").write_text(jwks(keys["rsa"], keys["ec"]))
    (directory / "rules.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        default: block
        identities:
          - name: billing-agent
            groups: [agents, billing]
            token_sha256: "{sha256(BILLING_TOKEN)}"
        jwt:
          issuer: {ISSUER}
          audience: {AUDIENCE}
          jwks: jwks.json
          leeway: 0
        upstreams:
          - host: 127.0.0.1
            ca_bundle: {pki.ca_cert}
        rules:
          - name: billing-paths
            match: {{path: "/billing/**", groups: [billing]}}
            action: allow
          - name: ci-paths
            match: {{path: "/ci/**", identity: [ci-bot]}}
            action: allow
          - name: public
            match: {{path: "/public/**"}}
            action: allow
    """))
    (directory / "identities.yaml").write_text(textwrap.dedent(f"""\
        # identities kept outside the rules file
        identities:
          - name: ci-bot
            groups: [ci]
            token_sha256: "{sha256(CI_TOKEN)}"
    """))
    return directory


@pytest.fixture(scope="module")
def gateway(home: Path, confdir: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(home / "rules.yaml", confdir,
                             ["--identities", str(home / "identities.yaml")]).start()
    yield process
    process.stop_soon()


def proxy(gateway: GatewayProcess, name: str | None = None, token: str | None = None) -> str:
    auth = f"{name}:{token}@" if name else ""
    return f"http://{auth}127.0.0.1:{gateway.port}"


def get(gateway: GatewayProcess, url: str, authorization: str | None = None,
        proxy_url: str | None = None) -> requests.Response:
    """A plain-HTTP request through the gateway with a hand-made Proxy-Authorization."""
    headers = {"Proxy-Authorization": authorization} if authorization else {}
    url_proxy = proxy_url or gateway.proxy_url
    return requests.get(url, headers=headers, proxies={"http": url_proxy, "https": url_proxy},
                        verify=str(gateway.ca_cert), timeout=10)


def basic(name: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()


def assert_refused(response: requests.Response, problem: str) -> None:
    assert response.status_code == 407, response.text
    body = response.json()
    assert body["error"] == "proxy_authentication_required"
    assert body["problem"] == problem
    assert body["reason"]
    assert 'Basic realm="portcullis"' in response.headers["Proxy-Authenticate"]


# --- basic tokens --------------------------------------------------------------------


def test_missing_credentials_get_407_and_never_reach_upstream(gateway, upstream):
    response = get(gateway, upstream.url("/public/x"))
    assert_refused(response, "missing")
    assert 'Bearer realm="portcullis"' in response.headers["Proxy-Authenticate"]
    assert upstream.received == []


@pytest.mark.parametrize(("authorization", "problem"), [
    (basic("billing-agent", "not-the-token"), "unknown"),
    (basic("nobody", BILLING_TOKEN), "unknown"),
    ("Basic !!!not-base64!!!", "malformed"),
    ("Basic " + base64.b64encode(b"no-colon").decode(), "malformed"),
    ("Digest username=x", "unsupported_scheme"),
])
def test_bad_basic_credentials_are_named(gateway, upstream, authorization, problem):
    assert_refused(get(gateway, upstream.url("/public/x"), authorization), problem)
    assert upstream.received == []


def test_good_token_passes_and_proxy_authorization_is_not_forwarded(gateway, upstream):
    response = get(gateway, upstream.url("/billing/invoices"),
                   proxy_url=proxy(gateway, "billing-agent", BILLING_TOKEN))
    assert response.status_code == 200
    assert response.headers["X-Portcullis-Decision"] == "allowed"
    (seen,) = upstream.received
    assert "proxy-authorization" not in seen.headers


def test_rules_are_scoped_by_identity_and_group(gateway, upstream):
    billing = proxy(gateway, "billing-agent", BILLING_TOKEN)
    ci = proxy(gateway, "ci-bot", CI_TOKEN)  # defined in the separate --identities file
    assert get(gateway, upstream.url("/billing/x"), proxy_url=billing).status_code == 200
    assert get(gateway, upstream.url("/ci/x"), proxy_url=billing).status_code == 403
    assert get(gateway, upstream.url("/ci/x"), proxy_url=ci).status_code == 200
    blocked = get(gateway, upstream.url("/billing/x"), proxy_url=ci)
    assert blocked.status_code == 403
    assert blocked.json()["error"] == "blocked_by_policy"
    assert [r.path for r in upstream.received] == ["/billing/x", "/ci/x"]


# --- HTTPS: credentials on CONNECT ------------------------------------------------------


def test_https_identity_comes_from_connect_and_scopes_the_tunnel(gateway, tls_upstream):
    ci = proxy(gateway, "ci-bot", CI_TOKEN)
    with requests.Session() as session:  # one tunnel per host, reused
        session.proxies = {"https": ci}
        ca = str(gateway.ca_cert)  # per request: requests lets *_CA_BUNDLE env beat session.verify
        assert session.get(tls_upstream.url("/ci/one"), verify=ca, timeout=10).status_code == 200
        assert session.get(tls_upstream.url("/billing/two"), verify=ca, timeout=10).status_code == 403
    assert [r.path for r in tls_upstream.received] == ["/ci/one"]
    assert "proxy-authorization" not in tls_upstream.received[0].headers


def _raw_connect(gateway: GatewayProcess, target: str, authorization: str | None) -> tuple[str, dict]:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if authorization:
            lines.append(f"Proxy-Authorization: {authorization}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_connect_without_valid_credentials_is_refused_with_json(gateway, tls_upstream):
    target = f"127.0.0.1:{tls_upstream.port}"
    status, body = _raw_connect(gateway, target, None)
    assert status.startswith("HTTP/1.1 407")
    assert body["problem"] == "missing"
    status, body = _raw_connect(gateway, target, basic("ci-bot", "wrong"))
    assert status.startswith("HTTP/1.1 407")
    assert body["problem"] == "unknown"
    with pytest.raises(requests.exceptions.ProxyError, match="407"):
        get(gateway, tls_upstream.url("/public/x"), proxy_url=proxy(gateway, "ci-bot", "wrong"))
    assert tls_upstream.received == []


# --- JWTs ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_valid_jwt_gives_identity_and_groups_from_claims(gateway, upstream, keys, kind):
    token = keys[kind].token(sub=f"{kind}-agent", groups=["billing"])
    assert get(gateway, upstream.url("/billing/x"), f"Bearer {token}").status_code == 200
    assert get(gateway, upstream.url("/ci/x"), f"Bearer {token}").status_code == 403


def test_jwt_in_the_proxy_url_works_for_https(gateway, tls_upstream, keys):
    token = keys["ec"].token(sub="ci-bot", groups="ci other")  # space-separated groups claim
    response = get(gateway, tls_upstream.url("/ci/x"), proxy_url=proxy(gateway, "jwt", token))
    assert response.status_code == 200


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["billing", "admin"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize(("make", "problem"), [
    (lambda k: k["rsa"].token(lifetime=-3600), "expired"),
    (lambda k: k["ec"].token(nbf=int(time.time()) + 3600), "not_yet_valid"),
    (lambda k: k["rsa"].token(aud="someone-else"), "wrong_audience"),
    (lambda k: k["ec"].token(iss="https://evil.test/"), "wrong_issuer"),
    (lambda k: k["stranger"].token(), "unknown_key"),
    (lambda k: _tampered(k["rsa"].token(groups=["billing"])), "bad_signature"),
    (lambda k: "not.a.jwt", "malformed"),
])
def test_bad_jwts_are_refused_with_the_reason(gateway, upstream, keys, make, problem):
    assert_refused(get(gateway, upstream.url("/public/x"), f"Bearer {make(keys)}"), problem)
    assert upstream.received == []


def test_hmac_jwt_cannot_pass_as_a_public_key_token(gateway, upstream, keys):
    # The classic algorithm confusion: an HS256 token whose HMAC key is the public key.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    public = json.dumps(keys["rsa"].jwk()).encode()
    token = f"{signing_input}.{b64(hmac.new(public, signing_input.encode(), 'sha256').digest())}"
    assert_refused(get(gateway, upstream.url("/public/x"), f"Bearer {token}"), "unsupported_algorithm")


# --- adding identities, secrets in logs --------------------------------------------------


def identity_add(path: Path, name: str, groups: str) -> str:
    """`portcullis identity add` in-process (tests/test_identity_command.py runs it for real)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["identity", "add", name, "--groups", groups, "--file", str(path)]) == 0
    return out.getvalue().strip()


def test_identity_add_takes_effect_without_restart(gateway, home, upstream):
    token = identity_add(home / "identities.yaml", "new-agent", "billing")
    assert len(token) >= 40
    assert token not in (home / "identities.yaml").read_text()
    assert "# identities kept outside the rules file" in (home / "identities.yaml").read_text()
    deadline = time.monotonic() + 5
    while True:
        response = get(gateway, upstream.url("/billing/new"), proxy_url=proxy(gateway, "new-agent", token))
        if response.status_code != 407 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200
    gateway.wait_for_output("reloaded identities")


def test_tokens_never_appear_in_the_gateway_output(gateway, upstream, keys):
    token = keys["rsa"].token(groups=["billing"])
    get(gateway, upstream.url("/billing/x"), f"Bearer {token}")
    get(gateway, upstream.url("/billing/x"), basic("billing-agent", BILLING_TOKEN))
    get(gateway, upstream.url("/billing/x"), basic("billing-agent", "wrong-token-xyz"))
    output = gateway.output
    assert "identity: proxy credentials required (2 token identities, JWTs from https://idp.test/)" in output
    assert "proxy authentication failed (unknown)" in output
    for secret in (BILLING_TOKEN, CI_TOKEN, token, "wrong-token-xyz"):
        assert secret not in output
    assert "Proxy-Authorization" not in output


def test_revoking_an_identity_closes_its_open_tunnels(gateway, home, tls_upstream):
    path = home / "identities.yaml"
    before = path.read_text()
    token = identity_add(path, "short-lived", "ci")
    ca = str(gateway.ca_cert)
    with requests.Session() as session:
        session.proxies = {"https": proxy(gateway, "short-lived", token)}
        deadline = time.monotonic() + 5
        while True:  # until the gateway has reloaded the file: a refused CONNECT raises
            try:
                assert session.get(tls_upstream.url("/public/1"), verify=ca, timeout=10).status_code == 200
                break
            except requests.exceptions.ProxyError:
                assert time.monotonic() < deadline, "the new identity was not loaded"
                time.sleep(0.2)
        path.write_text(before)  # revoke
        deadline = time.monotonic() + 5
        while (response := session.get(tls_upstream.url("/public/2"), verify=ca, timeout=10)).status_code == 200:
            assert time.monotonic() < deadline, "the revocation was not applied to the open tunnel"
            time.sleep(0.2)
    assert response.status_code == 407
    assert response.json()["problem"] == "unknown"


def test_a_jwt_bound_to_a_tunnel_stops_working_when_it_expires(gateway, tls_upstream, keys):
    token = keys["ec"].token(lifetime=2, sub="ci-bot", groups=["ci"])
    expires = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    ca = str(gateway.ca_cert)
    with requests.Session() as session:
        session.proxies = {"https": proxy(gateway, "jwt", token)}
        assert session.get(tls_upstream.url("/ci/1"), verify=ca, timeout=10).status_code == 200
        time.sleep(max(0.0, expires - time.time() + 0.3))
        response = session.get(tls_upstream.url("/ci/2"), verify=ca, timeout=10)
    assert response.status_code == 407
    assert response.json()["problem"] == "expired"


def test_proxy_credentials_are_not_in_the_recording(gateway, upstream, keys):
    """Runs last: stops the module's gateway so the recording is complete on disk."""
    token = keys["ec"].token(groups=["billing"])
    marker = "identity-marker-2231"
    headers = {"X-Marker": marker}
    for authorization in (f"Bearer {token}", basic("billing-agent", BILLING_TOKEN), basic("x", "bad-9z")):
        requests.get(upstream.url("/billing/r"), headers={**headers, "Proxy-Authorization": authorization},
                     proxies={"http": gateway.proxy_url}, timeout=10)
    gateway.stop()
    assert find_in_recording(gateway.db, [marker]) == [marker]
    assert find_in_recording(gateway.db, [token, BILLING_TOKEN, "bad-9z", "\"proxy-authorization\""]) == []
