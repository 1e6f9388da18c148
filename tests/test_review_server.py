"""The review UI's place in the gateway: when it starts, loud failures, the proxy guard's parsing."""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import threading
import time

import duckdb
import pytest
import requests

from recordings.control import ask
from review_ui.reviewers import add_reviewer
from review_ui.server_addon import literal_ip, parse_ui_address
from tests.support import cli_run
from tests.support.gateway import GatewayProcess, free_port

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
        run = cli_run.portcullis("run", "--listen", f"127.0.0.1:{free_port()}", "--rules", str(rules),
                                 "--confdir", str(confdir), "--db", str(tmp_path / "r.duckdb"),
                                 "--ui", f"127.0.0.1:{port}", "--reviewers", str(reviewers))
    assert run.returncode != 0
    assert f"review UI cannot listen on 127.0.0.1:{port}" in run.stdout + run.stderr


def test_a_missing_reviewers_file_stops_the_gateway(tmp_path, confdir):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules: []\n")
    run = cli_run.portcullis("run", "--listen", f"127.0.0.1:{free_port()}", "--rules", str(rules),
                             "--confdir", str(confdir), "--db", str(tmp_path / "r.duckdb"),
                             "--reviewers", str(tmp_path / "nope.yaml"))
    assert run.returncode != 0
    assert "nope.yaml does not exist" in run.stdout + run.stderr


def test_a_hold_pending_at_a_crash_is_recorded_as_expired_after_restart(tmp_path, confdir, upstream):
    """The recorder's side of the agreement: holds never vanish silently."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n  - {name: wait, match: {path: /v1/wait}, action: hold}\n")
    db = tmp_path / "crash.duckdb"
    first = GatewayProcess(rules, confdir, ["--db", str(db), "--ui", "off"]).start()
    proxies = {"http": first.proxy_url}

    def agent() -> None:
        try:
            requests.post(upstream.url("/v1/wait"), json={}, proxies=proxies, timeout=30)
        except requests.RequestException:
            pass  # the gateway dies under it

    threading.Thread(target=agent, daemon=True).start()
    first.wait_for_output("held POST")
    # The recorder commits in the background; this test is about the restart: kill once
    # the hold's event is committed (the gateway's own answer to a query says so).
    deadline = time.monotonic() + 15
    while ask(db, "/query", {"sql": "SELECT count(*) FROM events WHERE kind = 'held'"})["rows"] != [[1]]:
        assert time.monotonic() < deadline, first.output[-2000:]
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    GatewayProcess(rules, confdir, ["--db", str(db), "--ui", "off"]).start().stop()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT decision, reason FROM flows WHERE path = '/v1/wait'").fetchall()
        events = con.execute("SELECT kind, detail FROM events WHERE kind IN ('held', 'expired')").fetchall()
    assert [kind for kind, _ in events] == ["held", "expired"]
    assert "gateway_restart" in json.dumps(rows) + json.dumps([d for _, d in events])
    assert rows and rows[0][0] == "expired"
    assert upstream.received == []
