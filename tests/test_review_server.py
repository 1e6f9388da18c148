"""The review UI's place in the gateway: when it starts, loud failures, the proxy guard's parsing."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys

import pytest

from addons.review_server import literal_ip, parse_ui_address
from gateway.settings import PROJECT_ROOT
from review_ui.reviewers import add_reviewer
from tests.support.gateway import free_port

RULES = """
    version: 1
    rules: []
"""


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
    ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("[::1]", "::1"),
    ("::ffff:127.0.0.1", "127.0.0.1"), ("10.0.0.1.", "10.0.0.1"), ("example.com", None), ("localhost", None),
])
def test_literal_ip_understands_every_spelling(host, address):
    found = literal_ip(host)
    assert (str(found) if found else None) == address
    if address:
        assert found == ipaddress.ip_address(address)


def test_ui_address_option():
    assert parse_ui_address("127.0.0.1:8081") == ("127.0.0.1", 8081)
    assert parse_ui_address("[::1]:9000") == ("::1", 9000)
    assert parse_ui_address("off") is None
    with pytest.raises(Exception, match="HOST:PORT"):
        parse_ui_address("8081")


def test_without_reviewers_the_ui_stays_off_and_says_why(start_gateway):
    gateway = start_gateway(RULES, "--ui", f"127.0.0.1:{free_port()}")
    assert "review UI: off (no --reviewers file" in gateway.output


def test_a_busy_ui_port_stops_the_gateway_with_a_clear_message(tmp_path, confdir):
    reviewers = tmp_path / "reviewers.yaml"
    add_reviewer(reviewers, "alice", [], "a-long-password", token=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules: []\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "--listen", f"127.0.0.1:{free_port()}",
             "--rules", str(rules), "--confdir", str(confdir), "--db", str(tmp_path / "r.duckdb"),
             "--ui", f"127.0.0.1:{port}", "--reviewers", str(reviewers)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
        )
    assert run.returncode != 0
    assert f"review UI cannot listen on 127.0.0.1:{port}" in run.stdout + run.stderr


def test_a_missing_reviewers_file_stops_the_gateway(tmp_path, confdir):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules: []\n")
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--listen", f"127.0.0.1:{free_port()}",
         "--rules", str(rules), "--confdir", str(confdir), "--db", str(tmp_path / "r.duckdb"),
         "--reviewers", str(tmp_path / "nope.yaml")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    assert "nope.yaml does not exist" in run.stdout + run.stderr
