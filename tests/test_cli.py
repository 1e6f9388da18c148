"""The portcullis command: check, explain, env, and run's start-up and shutdown behaviour."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import textwrap

import pytest

from gateway.settings import DEFAULT_RULES, PROJECT_ROOT
from tests.support.cli_run import portcullis, portcullis_here
from tests.support.gateway import GatewayProcess


def write(tmp_path, text: str, name: str = "rules.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_check_accepts_the_bundled_rules():
    result = portcullis_here("check", str(DEFAULT_RULES), *map(str, (PROJECT_ROOT / "rules").glob("examples/*.yaml")))
    assert result.returncode == 0, result.stderr
    assert "ok (" in result.stdout


def test_check_rejects_with_file_line_column_and_field(tmp_path):
    path = write(tmp_path, """\
        version: 1
        rules:
          - name: one
            match: {path: "/x", colour: red}
            action: block
          - name: two
            match: {json: {"$.a": {between: 3}}}
            action: maybe
    """)
    result = portcullis_here("check", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert f"{path}:4:25: rules[0].match.colour: unknown match key 'colour'" in lines[0]
    assert any(line.startswith(f"{path}:8:5: rules[1].action: action must be one of") for line in lines)
    assert any(f"{path}:7:" in line and "unknown operator 'between'" in line for line in lines)


def test_explain_shows_matches_and_decision_without_sending():
    result = portcullis_here(
        "explain", "--rules", str(DEFAULT_RULES), "--format", "json",
        "POST", "http://API.demo.test./v1/%71uery", "--json", '{"statement": "drop table x"}',
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["decision"] == "block"
    assert report["rule"] == "no-destructive-sql"
    assert report["normalized"] == {"host": "api.demo.test", "path": "/v1/query", "method": "POST"}
    text = portcullis_here("explain", "--rules", str(DEFAULT_RULES), "GET", "http://api.demo.test/v1/customers")
    assert "matches allow-reads" in text.stdout
    assert "decision: allow by allow-reads" in text.stdout


def test_env_prints_proxy_and_ca_trust_for_every_client(tmp_path):
    result = portcullis("env", "--listen", "127.0.0.1:9999", "--confdir", str(tmp_path / "conf"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    exports = dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))
    # aiohttp looks up wss:// and ws:// URLs under their own variables.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "WSS_PROXY", "WS_PROXY"):
        assert exports[name] == "http://127.0.0.1:9999"
    assert exports["NODE_USE_ENV_PROXY"] == "1"  # Node 24+'s built-in fetch
    assert exports["NO_PROXY"] == exports["no_proxy"] == "127.0.0.1:8081"
    ca = tmp_path / "conf" / "mitmproxy-ca-cert.pem"
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "AWS_CA_BUNDLE"):
        assert exports[name] == str(ca)
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    # What no variable can do is said as comments (harmless under eval), and only those.
    notes = [line for line in lines if not line.startswith("export ")]
    assert notes and all(line.startswith("# ") for line in notes)
    assert any("trust_env=True" in line for line in notes)
    assert any("EnvHttpProxyAgent" in line for line in notes)
    quiet = portcullis_here("env", "--no-notes", "--listen", "127.0.0.1:9999", "--confdir", str(tmp_path / "conf"))
    assert all(line.startswith("export ") for line in quiet.stdout.strip().splitlines())
    # eval "$(portcullis env)" in a real shell sets them.
    shell = subprocess.run(["sh", "-c", 'eval "$(cat)"; echo "$WSS_PROXY|$SSL_CERT_FILE"'],
                           input=result.stdout, capture_output=True, text=True, timeout=10)
    assert shell.stdout.strip() == f"http://127.0.0.1:9999|{ca}"


def test_run_refuses_an_invalid_rules_file_naming_the_line(tmp_path, confdir):
    path = write(tmp_path, "version: 1\nrules:\n  - name: x\n    match: {method: 7}\n")
    gateway = GatewayProcess(path, confdir)
    result = subprocess.run(gateway.command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{path}:4:13: rules[0].match.method: expected a non-empty string" in result.stderr


def test_run_reports_a_busy_port_clearly(tmp_path, confdir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        gateway = GatewayProcess(DEFAULT_RULES, confdir, ["--db", str(tmp_path / "r.duckdb")])
        gateway.port = busy.getsockname()[1]
        result = subprocess.run(gateway.command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"127.0.0.1:{gateway.port} is already in use" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_stops_cleanly_on_signals(tmp_path, confdir, sig, upstream):
    gateway = GatewayProcess(DEFAULT_RULES, confdir, ["--db", str(tmp_path / "r.duckdb")]).start()
    # A client in the middle of sending a request when the signal arrives.
    half_sent = socket.create_connection(("127.0.0.1", gateway.port))
    half_sent.sendall(f"GET {upstream.url('/')} HTTP/1.1\r\nHost: x\r\n".encode())
    banner = gateway.output
    assert f"proxy:    http://127.0.0.1:{gateway.port}" in banner
    assert f"CA cert:  {confdir}/mitmproxy-ca-cert.pem" in banner
    assert f"export HTTPS_PROXY=http://127.0.0.1:{gateway.port}" in banner
    assert gateway.stop(sig) == 0
    half_sent.close()
    assert "Traceback" not in gateway.output
    assert "CancelledError" not in gateway.output
