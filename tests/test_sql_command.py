"""`portcullis sql` and `portcullis export`, against a live gateway and after it stopped.

The tests run in file order: the last one stops the module's gateway.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import stat
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from gateway.settings import PROJECT_ROOT
from recordings.control import RequestFailed, ask, socket_path
from tests.support.cli_run import portcullis, portcullis_here
from tests.support.gateway import GatewayProcess
from tests.support.recording_reader import NO_DELETES, poll, proxied_session
from tests.support.upstream import UpstreamServer

RULES = NO_DELETES + """
      - name: big-refunds
        match: {method: POST, path: /v1/refunds, json: {"$.amount": {gt: 1000}}}
        action: block
        reason: Refunds over 1000 need a person
"""
DOC = PROJECT_ROOT / "docs" / "recording.md"


@pytest.fixture(scope="module")
def recording(tmp_path_factory, confdir) -> Iterator[GatewayProcess]:
    """A gateway with a little of everything recorded: allowed, blocked, errors, a session."""
    tmp = tmp_path_factory.mktemp("sql")
    (tmp / "rules.yaml").write_text(textwrap.dedent(RULES))
    upstream = UpstreamServer().start()
    gateway = GatewayProcess(tmp / "rules.yaml", confdir).start()
    http = proxied_session(gateway)
    session = {"X-Portcullis-Session": f"s-{uuid.uuid4().hex[:8]}"}
    for index in range(5):
        assert http.get(upstream.url(f"/v1/items/{index}"), headers=session, timeout=10).ok
    assert http.post(upstream.url("/v1/refunds"), json={"amount": 50}, headers=session, timeout=10).ok
    assert http.post(upstream.url("/v1/refunds"), json={"amount": 5000}, headers=session,
                     timeout=10).status_code == 403
    assert http.delete(upstream.url("/v1/tables/users"), timeout=10).status_code == 403
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        assert http.get(f"http://127.0.0.1:{closed.getsockname()[1]}/down", timeout=10).status_code == 502
    # Every flow is in the recording before a test queries it: rows are written in
    # batches, and `portcullis sql` starts in a tenth of a second.
    poll(lambda: recorded_count(gateway.db), lambda count: count >= 9, timeout=20)
    yield gateway
    gateway.stop()
    upstream.stop()


def recorded_count(db: Path) -> int:
    return ask(db, "/query", {"sql": "SELECT count(*) FROM flows"})["rows"][0][0]


def test_sql_while_running_goes_through_the_owner_only_socket(recording):
    sock = socket_path(recording.db)
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    with pytest.raises(duckdb.IOException, match="lock"):
        duckdb.connect(str(recording.db), read_only=True)  # why the socket is needed
    result = portcullis("sql", "--db", str(recording.db), "--format", "json",
                        "SELECT decision, count(*) AS n FROM flows GROUP BY ALL ORDER BY decision")
    assert result.returncode == 0, result.stderr
    counts = {row["decision"]: row["n"] for row in json.loads(result.stdout)}
    assert counts["blocked"] == 2 and counts["error"] == 1 and counts["allowed"] >= 6


def test_formats_table_csv_and_parquet(recording, tmp_path):
    db = str(recording.db)
    table = portcullis_here("sql", "--db", db, "SELECT method, count(*) AS n FROM flows GROUP BY ALL ORDER BY 1")
    assert table.returncode == 0, table.stderr
    assert re.search(r"^method +\| n", table.stdout, re.MULTILINE) and "DELETE" in table.stdout
    out = tmp_path / "flows.csv"
    as_csv = portcullis_here("sql", "--db", db, "--format", "csv", "--output", str(out),
                        "SELECT id, rules FROM flows WHERE decision = 'blocked' ORDER BY id")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted(json.loads(r["rules"])[0] for r in rows) == ["big-refunds", "no-deletes"]
    parquet = tmp_path / "all.parquet"
    written = portcullis_here("sql", "--db", db, "--format", "parquet", "--output", str(parquet), "FROM flows")
    assert written.returncode == 0, written.stderr
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{parquet}'").fetchone() == (recorded_count(recording.db),)


def test_writes_are_refused_while_running(recording):
    before = recorded_count(recording.db)
    result = portcullis("sql", "--db", str(recording.db), "DELETE FROM flows")
    assert result.returncode == 1
    assert "read_only" in result.stderr
    for statement in ("DROP TABLE events", "UPDATE flows SET decision = 'allowed'",
                      "INSERT INTO events (flow_id) VALUES ('x')", "SELECT 1; DELETE FROM flows",
                      "COPY flows TO '/tmp/stolen.csv'", "CHECKPOINT"):
        with pytest.raises(RequestFailed) as refused:
            ask(recording.db, "/query", {"sql": statement})
        assert refused.value.body["error"] == "read_only", statement
    assert recorded_count(recording.db) == before


def test_export_while_running_round_trips_through_duckdb(recording, tmp_path):
    for fmt, ext in (("parquet", "parquet"), ("jsonl", "jsonl")):
        out = tmp_path / fmt
        result = portcullis_here("export", "--db", str(recording.db), "--since", "2020-01-01",
                            "--format", fmt, "--output", str(out))
        assert result.returncode == 0, result.stderr
        exported = duckdb.connect()
        flows = exported.execute(f"SELECT CAST(id AS VARCHAR), decision, rules "
                                 f"FROM '{out}/flows.{ext}' ORDER BY id").fetchall()
        live = ask(recording.db, "/query", {"sql": "SELECT id, decision, rules FROM flows ORDER BY id"})
        assert [list(row) for row in flows] == live["rows"]
        events = exported.execute(f"SELECT count(*) FROM '{out}/events.{ext}'").fetchone()
        assert events == (ask(recording.db, "/query", {"sql": "SELECT count(*) FROM events"})["rows"][0][0],)
    future = portcullis_here("export", "--db", str(recording.db), "--since", "2999-01-01",
                        "--output", str(tmp_path / "none"))
    assert future.returncode == 0 and "exported 0 flows" in future.stdout


def doc_queries() -> list[tuple[str, str]]:
    found = re.findall(r"^### \d+\. (.+?)\n+```sql\n(.*?)```", DOC.read_text(),
                       flags=re.MULTILINE | re.DOTALL)
    return [(title, sql) for title, sql in found]


def test_the_ten_documented_queries_run_on_a_real_recording(recording):
    queries = doc_queries()
    assert len(queries) == 10
    results = {title: ask(recording.db, "/query", {"sql": sql})["rows"] for title, sql in queries}
    assert results["Decisions in the last 24 hours"]
    assert sorted(row[0] for row in results["What was blocked, by rule"]) == ["big-refunds", "no-deletes"]
    assert len(results["Everything the latest agent session did, in order"]) == 7
    assert [row[1] for row in results["The audit trail of the latest denial"]][0] == "received"
    assert results["Upstream failures per host and kind"][0][2] == 1
    assert [(row[2], row[3]) for row in results["Refund requests over 1000, whatever was decided (JSON in bodies)"]] \
        == [("blocked", 5000.0)]
    assert results["Busiest endpoints, with their error rate and traffic"]


def test_after_the_gateway_stops_sql_opens_the_file_read_only(recording, tmp_path):
    before = recorded_count(recording.db)
    assert recording.stop() == 0
    assert not socket_path(recording.db).exists()
    result = portcullis("sql", "--db", str(recording.db), "--format", "csv", "SELECT count(*) AS n FROM flows")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["n", str(before)]
    refused = portcullis_here("sql", "--db", str(recording.db), "DELETE FROM flows")
    assert refused.returncode == 1 and "read_only" in refused.stderr
    exported = portcullis_here("export", "--db", str(recording.db), "--output", str(tmp_path / "x"))
    assert exported.returncode == 0, exported.stderr
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{tmp_path}/x/flows.parquet'").fetchone() == (before,)
    con = duckdb.connect(str(recording.db), read_only=True)
    assert con.execute("SELECT count(*) FROM flows").fetchone() == (before,)
    con.close()
