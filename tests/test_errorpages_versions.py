"""The JSON error answers patch mitmproxy internals (addons/upstreams/errorpages.py): on the
installed mitmproxy (CI runs this file on 3.11 + mitmproxy 11 and on 3.12 + mitmproxy 12)
the patch applies, proved where it is exercised, through a real gateway; and on a
mitmproxy major it was not written for, the gateway refuses to start, saying why."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import requests
from mitmproxy import version
from mitmproxy.proxy.layers.http import _http1, _http2

from addons.upstreams import errorpages
from gateway.settings import PROJECT_ROOT
from tests.support.gateway import READY_LINE, free_port
from tests.support.hardening import raw_request, shared_gateway

INSTALLED = version.VERSION


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    rules = "version: 1\ndefault: allow\n"
    with shared_gateway(tmp_path_factory.mktemp("errorpages"), confdir, rules) as gw:
        yield gw


def test_installed_mitmproxy_is_a_supported_major():
    assert errorpages.unsupported_version(INSTALLED) is None, INSTALLED
    assert int(INSTALLED.split(".")[0]) in errorpages.SUPPORTED_MAJORS


def test_install_wraps_the_three_places_that_write_error_pages():
    assert errorpages.install()
    for patched in (_http1.Http1Server.send, _http1.Http1Server.read_body,
                    _http2.Http2Server._handle_event):
        assert hasattr(patched, "__wrapped__"), patched  # the wrapper, not mitmproxy's own
    assert _http1.make_error_response(502, "x").startswith(b"HTTP/1.1 502 ")
    assert b'"error": "upstream_protocol_error"' in _http1.make_error_response(502, "x")


def closed_port() -> int:
    return free_port()  # bound once and released: nothing listens there


def test_http1_agent_gets_json_not_html_when_the_upstream_is_down(gateway):
    response = requests.get(f"http://127.0.0.1:{closed_port()}/v1/x",
                            proxies={"http": gateway.proxy_url}, timeout=30)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json", f"mitmproxy {INSTALLED}"
    assert "<html" not in response.text.lower()
    assert response.json()["error"] == "upstream_unreachable"


def test_http2_agent_gets_json_not_html_when_the_upstream_is_down(gateway):
    result = subprocess.run(
        ["curl", "-s", "--http2", "-x", gateway.proxy_url, "--cacert", str(gateway.ca_cert),
         "-w", "\n%{http_version} %{http_code} %{content_type}", f"https://127.0.0.1:{closed_port()}/"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    body, _, summary = result.stdout.rpartition("\n")
    assert summary == "2 502 application/json", f"mitmproxy {INSTALLED}: {result.stdout}"
    assert json.loads(body)["error"] == "upstream_unreachable"


def test_malformed_request_gets_json_400(gateway):
    response = raw_request(gateway.port, b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n")
    assert response.status == 400
    assert response.headers["content-type"] == "application/json", f"mitmproxy {INSTALLED}"
    assert response.json()["error"] == "bad_request"


@pytest.mark.parametrize("unknown", ["13.0.0", "10.4.2", "14.0.0.dev0"])
def test_unknown_majors_are_refused_with_a_message_naming_both_versions(unknown):
    message = errorpages.unsupported_version(unknown)
    assert message is not None
    assert f"mitmproxy {unknown}" in message and "11.x and 12.x" in message


def test_gateway_refuses_to_start_on_an_unknown_mitmproxy_major(tmp_path, confdir):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\ndefault: allow\n")
    port = free_port()
    pretend = textwrap.dedent("""
        import sys
        import mitmproxy.version
        mitmproxy.version.VERSION = "13.0.0"  # as if a future mitmproxy were installed
        from gateway.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    result = subprocess.run(
        [sys.executable, "-c", pretend, "run", "--listen", f"127.0.0.1:{port}", "--rules", str(rules),
         "--confdir", str(confdir), "--db", str(tmp_path / "r.duckdb"), "--ui", "off"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "does not support mitmproxy 13.0.0" in output and "11.x and 12.x" in output
    assert READY_LINE not in output  # it never served a request
