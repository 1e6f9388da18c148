"""Credential injection end to end: secrets from env and files, replaced agent headers,
echoed secrets masked, and fail-loud validation when a secret is missing."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from addons.credentials.addon import StreamMasker
from gateway.cli import main
from gateway.settings import PROJECT_ROOT
from tests.support import certs
from tests.support.gateway import GatewayProcess, free_port
from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401
from tests.support.recording_check import find_in_recording
from tests.support.upstream import Canned, Received

API_KEY = "sk_live_51HxTESTsecretKEY0042"
FILE_KEY = "db-key-from-a-file-7731"
LEGACY_KEY = "legacy+key/with spaces=1"
SECRET_ENV = {"PC_TEST_API_KEY": API_KEY, "PC_TEST_LEGACY_KEY": LEGACY_KEY}


RULES = """\
    version: 1
    default: allow
    upstreams:
      - host: 127.0.0.1
        ca_bundle: {ca}
    rules:
      - name: no-admin
        match: {{path: "/admin/**"}}
        action: block
    credentials:
      - name: billing-only
        match: {{path: "/billing/**", identity: [billing-agent]}}
        set_header: {{X-Api-Key: "${{file:secrets/db_api_key}}"}}
        query: {{api_key: "${{env:PC_TEST_LEGACY_KEY}}"}}
        plain_http: true
      - name: echo-api
        match: {{path: ["/echo/**", "/admin/**", "/billing/**"]}}
        set_header: {{Authorization: "Bearer ${{env:PC_TEST_API_KEY}}"}}
        plain_http: true
      - name: tls-only
        match: {{path: "/tls/**"}}
        set_header: {{Authorization: "Bearer ${{env:PC_TEST_API_KEY}}"}}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, pki: certs.TestPki) -> Path:
    directory = tmp_path_factory.mktemp("credentials")
    (directory / "secrets").mkdir()
    (directory / "secrets" / "db_api_key").write_text(FILE_KEY + "\n")
    (directory / "rules.yaml").write_text(textwrap.dedent(RULES.format(ca=pki.ca_cert)))
    return directory


@pytest.fixture(scope="module")
def gateway(home: Path, confdir: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(home / "rules.yaml", confdir, env=SECRET_ENV).start()
    yield process
    process.stop_soon()


def call(gateway: GatewayProcess, url: str, **kwargs) -> requests.Response:
    proxies = {"http": gateway.proxy_url, "https": gateway.proxy_url}
    return requests.get(url, proxies=proxies, verify=str(gateway.ca_cert), timeout=10, **kwargs)


def test_header_from_env_replaces_the_agents_own(gateway, upstream):
    response = call(gateway, upstream.url("/echo/x"), headers={"Authorization": "Bearer agent-guess"})
    assert response.status_code == 200
    (seen,) = upstream.received
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert "agent-guess" not in str(seen.headers)


def test_header_from_file_and_query_from_env_for_one_identity_only(gateway, upstream):
    # Anonymous callers fall through to the next matching entry (no file key, no query key).
    call(gateway, upstream.url("/billing/x?api_key=agents-own&page=2"))
    (seen,) = upstream.received
    assert "x-api-key" not in seen.headers
    assert seen.path == "/billing/x?api_key=agents-own&page=2"


def test_secret_echoed_in_body_and_headers_is_masked(gateway, upstream):
    def echo_everywhere(seen: Received) -> Canned:
        return Canned(200, {"you_sent": seen.headers.get("authorization")},
                      {"X-Echo": seen.headers.get("authorization", "")})

    upstream.routes["/echo/headers"] = echo_everywhere
    response = call(gateway, upstream.url("/echo/headers"))
    assert response.status_code == 200
    assert API_KEY not in response.text
    assert response.json() == {"you_sent": "[redacted]"}  # the whole injected value
    assert response.headers["X-Echo"] == "[redacted]"


def test_secret_echoed_in_a_compressed_body_is_masked(gateway, upstream):
    upstream.routes["/echo/gzip"] = lambda seen: Canned(
        200, gzip.compress(f"token={seen.headers['authorization']}".encode()),
        {"Content-Encoding": "gzip", "Content-Type": "text/plain"},
    )
    response = call(gateway, upstream.url("/echo/gzip"))
    assert response.text == "token=[redacted]"


def test_blocked_requests_get_no_credentials(gateway, upstream):
    response = call(gateway, upstream.url("/admin/users"))
    assert response.status_code == 403
    assert upstream.received == []
    assert API_KEY not in response.text


def test_plain_http_is_refused_for_https_only_credentials(gateway, upstream):
    response = call(gateway, upstream.url("/tls/x"))
    assert response.status_code == 403
    assert response.json()["error"] == "credentials_need_https"
    assert upstream.received == []


def test_https_request_gets_credentials(gateway, tls_upstream):
    response = call(gateway, tls_upstream.url("/tls/x"), headers={"Authorization": "Basic bWU6bWU="})
    assert response.status_code == 200
    (seen,) = tls_upstream.received
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in response.text  # the default route echoes the request headers


def test_secrets_never_appear_in_the_gateway_output(gateway, upstream):
    call(gateway, upstream.url("/echo/log"))
    for secret in (API_KEY, FILE_KEY, LEGACY_KEY):
        assert secret not in gateway.output
    assert "identity: anonymous (no identities configured)" in gateway.output
    assert "credentials: 3 injection rules" in gateway.output


# --- identity-scoped credentials and validation (own gateways / no gateway) ---------------


def test_identity_scoped_credentials_from_file_and_query(home, confdir, upstream, tmp_path):
    import hashlib
    token = "billing-token-for-credentials"
    rules = (home / "rules.yaml").read_text().replace("rules:\n", textwrap.dedent(f"""\
        identities:
          - name: billing-agent
            groups: [billing]
            token_sha256: "{hashlib.sha256(token.encode()).hexdigest()}"
        rules:
        """), 1)
    path = home / "rules-identities.yaml"
    path.write_text(rules)
    gateway = GatewayProcess(path, confdir, env=SECRET_ENV).start()
    try:
        proxy = f"http://billing-agent:{token}@127.0.0.1:{gateway.port}"
        response = requests.get(upstream.url("/billing/x?api_key=agents-own&page=2"),
                                proxies={"http": proxy}, headers={"X-Marker": "marker-0815"}, timeout=10)
    finally:
        gateway.stop()
    assert find_in_recording(gateway.db, ["marker-0815"]) == ["marker-0815"]
    assert find_in_recording(gateway.db, [FILE_KEY, LEGACY_KEY, "legacy%2Bkey%2Fwith+spaces%3D1", token]) == []
    assert response.status_code == 200
    (seen,) = upstream.received
    assert seen.headers["x-api-key"] == FILE_KEY
    assert "authorization" not in seen.headers  # first matching entry only
    assert "api_key=legacy%2Bkey%2Fwith+spaces%3D1" in seen.path
    assert "agents-own" not in seen.path and "page=2" in seen.path
    # The upstream echoed the path (URL-encoded secret) and the headers (file secret).
    assert FILE_KEY not in response.text and "legacy%2Bkey" not in response.text


def _check(rules: Path, env: dict[str, str], monkeypatch, capsys) -> tuple[int, str]:
    """`portcullis check` in-process (the CLI start-up costs seconds under load)."""
    for name in [n for n in os.environ if n.startswith("PC_TEST_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["check", str(rules)])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_missing_env_secret_is_a_validation_error_naming_rule_and_variable(home, monkeypatch, capsys):
    code, output = _check(home / "rules.yaml", {"PC_TEST_LEGACY_KEY": LEGACY_KEY}, monkeypatch, capsys)
    assert code == 1
    assert "credentials[1].set_header.Authorization" in output
    assert "credential rule 'echo-api': environment variable PC_TEST_API_KEY is not set" in output
    assert LEGACY_KEY not in output


def test_missing_file_secret_is_a_validation_error_naming_the_path(tmp_path, monkeypatch, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent("""\
        version: 1
        credentials:
          - match: {host: api.example.com}
            set_header: {X-Key: "${file:nope/key}"}
    """))
    code, output = _check(rules, {}, monkeypatch, capsys)
    assert code == 1
    assert f"{rules}:4:" in output
    assert f"credentials[0]: cannot read secret file {tmp_path / 'nope' / 'key'}" in output


def test_gateway_refuses_to_start_without_its_secrets(start_gateway):
    with pytest.raises(RuntimeError, match="PC_TEST_MISSING is not set"):
        start_gateway("""
            version: 1
            credentials:
              - match: {host: api.example.com}
                set_header: {Authorization: "Bearer ${env:PC_TEST_MISSING}"}
        """)


def test_injected_secrets_are_not_in_the_recording(gateway, upstream):
    """Runs last: stops the module's gateway so the recording is complete on disk."""
    marker = "visible-marker-4711"
    upstream.routes["/echo/record"] = lambda seen: Canned(200, {"auth": seen.headers["authorization"]})
    call(gateway, upstream.url("/echo/record"), headers={"X-Marker": marker, "Authorization": "Bearer mine"})
    call(gateway, upstream.url("/billing/x?api_key=mine"))
    gateway.stop()
    # The marker proves the search works on this file: it was recorded, the secrets were not.
    assert find_in_recording(gateway.db, [marker]) == [marker]
    forms = [API_KEY, FILE_KEY, LEGACY_KEY, "legacy%2Bkey%2Fwith+spaces%3D1"]
    assert find_in_recording(gateway.db, forms) == []


def test_stream_masker_catches_secrets_split_across_chunks():
    secrets = {f"Bearer {API_KEY}", API_KEY}
    body = f'{{"a": "x{API_KEY}y", "b": "Bearer {API_KEY}"}}'.encode() * 3
    for size in (1, 2, 7, 19, len(API_KEY) - 1, len(API_KEY), 64, len(body)):
        masker = StreamMasker(secrets)
        out = []
        for i in range(0, len(body), size):
            result = masker(body[i:i + size])
            out.extend(result if isinstance(result, list) else [result])
        out.append(masker(b""))
        assert all(out[:-1]), "an empty chunk would end a chunked body early"
        assert b"".join(out) == body.replace(f"Bearer {API_KEY}".encode(), b"[redacted]").replace(
            API_KEY.encode(), b"[redacted]"), size
        assert masker.count == 6


def test_streamed_responses_are_masked_or_refused(home, confdir, upstream):
    """Under mitmproxy's stream_large_bodies the body never reaches the response hook whole."""
    port = free_port()
    mitmdump = Path(sys.executable).with_name("mitmdump")
    process = subprocess.Popen(
        [str(mitmdump), "-s", "addons/portcullis.py", "--listen-host", "127.0.0.1", "-p", str(port),
         "--set", f"confdir={confdir}", "--set", f"portcullis_rules={home / 'rules.yaml'}",
         "--set", "portcullis_db=", "--set", "portcullis_ui=off", "--set", "stream_large_bodies=1k",
         "--set", "flow_detail=0"],  # mitmdump's flow printer would log the injected query key
        cwd=PROJECT_ROOT, env={**os.environ, **SECRET_ENV}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    pad = "x" * 5000
    noise = os.urandom(4000).hex()  # stays over 1k when gzipped
    upstream.routes["/echo/large"] = lambda seen: Canned(200, f"{pad}{seen.headers['authorization']}{pad}")
    upstream.routes["/echo/large-gzip"] = lambda seen: Canned(
        200, gzip.compress(f"{noise}{seen.headers['authorization']}".encode()), {"Content-Encoding": "gzip"})
    proxies = {"http": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                large = requests.get(upstream.url("/echo/large"), proxies=proxies, timeout=10)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "".join(output)
                time.sleep(0.2)
        compressed = requests.get(upstream.url("/echo/large-gzip"), proxies=proxies, timeout=10)
    finally:
        process.terminate()
        process.wait(20)
    assert large.status_code == 200
    assert large.text == f"{pad}[redacted]{pad}"
    assert compressed.status_code == 502
    assert compressed.json()["error"] == "response_not_scannable"
    assert API_KEY not in compressed.text and API_KEY not in "".join(output)


def test_mitmdump_refuses_to_print_injected_secrets(home, confdir):
    mitmdump = Path(sys.executable).with_name("mitmdump")
    result = subprocess.run(
        [str(mitmdump), "-s", "addons/portcullis.py", "--listen-host", "127.0.0.1", "-p", str(free_port()),
         "--set", f"confdir={confdir}", "--set", f"portcullis_rules={home / 'rules.yaml'}",
         "--set", "portcullis_db=", "--set", "portcullis_ui=off"],
        cwd=PROJECT_ROOT, env={**os.environ, **SECRET_ENV}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "flow_detail=1 prints URLs with their query strings" in result.stdout + result.stderr
