"""`portcullis exec`: real clients (requests, httpx, urllib, curl) started by the command reach
upstreams only through the gateway, with the agent's identity."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from tests.support import certs, cli_run
from tests.support.gateway import GatewayProcess, free_port
from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401

TOKEN = "exec-test-token-5521"

CLIENT = textwrap.dedent("""\
    import json, sys, urllib.request
    import httpx, requests
    url, tls_url = sys.argv[1], sys.argv[2]
    out = {
        "requests": requests.get(url, timeout=10).status_code,
        "requests_tls": requests.get(tls_url, timeout=10).status_code,
        "httpx_tls": httpx.Client(trust_env=True).get(tls_url, timeout=10).status_code,
    }
    try:
        out["urllib"] = urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        out["urllib"] = exc.code
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, confdir: Path, pki: certs.TestPki) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("exec")
    (directory / "rules.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        default: block
        identities:
          - name: billing-agent
            groups: [billing]
            token_sha256: "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
        upstreams:
          - host: 127.0.0.1
            ca_bundle: {pki.ca_cert}
        rules:
          - name: billing
            match: {{path: "/billing/**", groups: [billing]}}
            action: allow
    """))
    process = GatewayProcess(directory / "rules.yaml", confdir).start()
    yield process
    process.stop_soon()


def portcullis_exec(gateway: GatewayProcess, *args: str, env: dict[str, str] | None = None,
                    port: int | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items()
                   if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    environment.update(env or {})
    return cli_run.portcullis("exec", "--listen", f"127.0.0.1:{port or gateway.port}",
                              "--confdir", str(gateway.confdir), *args, env=environment)


def test_python_clients_go_through_the_gateway_as_the_identity(gateway, upstream, tls_upstream):
    result = portcullis_exec(
        gateway, "--identity", "billing-agent", "--", sys.executable, "-c", CLIENT,
        upstream.url("/billing/a"), tls_upstream.url("/billing/b"),
        env={"PORTCULLIS_TOKEN": TOKEN, "NO_PROXY": "127.0.0.1,localhost"},  # a bypass exec removes
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"requests": 200, "requests_tls": 200, "httpx_tls": 200, "urllib": 200}
    assert len(upstream.received) == 2 and len(tls_upstream.received) == 2
    for seen in upstream.received + tls_upstream.received:
        assert "proxy-authorization" not in seen.headers


def test_python_client_without_identity_gets_407(gateway, upstream, tls_upstream):
    result = portcullis_exec(gateway, "--", sys.executable, "-c",
                             "import requests,sys; print(requests.get(sys.argv[1], timeout=10).status_code)",
                             upstream.url("/billing/a"))
    assert result.stdout.strip() == "407"
    assert upstream.received == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_goes_through_the_gateway_for_http_and_https(gateway, upstream, tls_upstream):
    result = portcullis_exec(
        gateway, "--identity", "billing-agent", "--token-env", "AGENT_TOKEN", "--",
        "curl", "-sS", "-w", "%{http_code} ",
        "-o", "/dev/null", upstream.url("/billing/c"), "-o", "/dev/null", tls_upstream.url("/billing/d"),
        env={"AGENT_TOKEN": TOKEN},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "200"]
    assert [r.path for r in upstream.received + tls_upstream.received] == ["/billing/c", "/billing/d"]


def test_exec_refuses_without_the_token_or_the_gateway(gateway, monkeypatch, capsys):
    # In-process: these return before the exec that would replace the test process.
    monkeypatch.delenv("PORTCULLIS_TOKEN", raising=False)
    common = ["exec", "--confdir", str(gateway.confdir)]
    assert main([*common, "--listen", f"127.0.0.1:{gateway.port}", "--identity", "billing-agent",
                 "--", "true"]) == 2
    assert "needs its token in $PORTCULLIS_TOKEN" in capsys.readouterr().err
    assert main([*common, "--listen", f"127.0.0.1:{free_port()}", "--", "true"]) == 2
    assert "no gateway is listening" in capsys.readouterr().err
    assert main([*common, "--listen", f"127.0.0.1:{gateway.port}"]) == 2
    assert "no command given" in capsys.readouterr().err


def test_exec_passes_the_exit_code_and_puts_credentials_in_the_proxy_url(gateway):
    result = portcullis_exec(gateway, "--identity", "billing-agent", "--", sys.executable, "-c",
                             "import os,sys; print(os.environ['HTTPS_PROXY']); sys.exit(7)",
                             env={"PORTCULLIS_TOKEN": TOKEN})
    assert result.returncode == 7
    assert result.stdout.strip() == f"http://billing-agent:{TOKEN}@127.0.0.1:{gateway.port}"
