"""One audit lake for two gateways: DuckLake with its catalog in a real PostgreSQL.

Gateways A and B (real processes) record into the same lake (catalog in PostgreSQL,
data files in one directory) while an analyst's separate DuckDB process queries it:
every flow is there exactly once, either gateway's ``portcullis sql`` sees both, a
SIGKILLed gateway loses no completed flow and its restart closes only its own open
flows, and maintenance runs in one process at a time and compacts the files.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests

from recordings import extensions, maintenance
from recordings.control import ask
from recordings.lake import Lake
from recordings.store import Store, micros
from tests.support.gateway import GatewayProcess
from tests.support.module_servers import module_upstream  # noqa: F401  (the module's upstream)
from tests.support.recording_reader import (
    NO_DELETES,
    analyst_result,
    poll,
    proxied_session,
    start_analyst,
)
from tests.support.upstream import Canned

#: Requests per gateway (bench/lake.py sends 2 x 2,000).
PER_GATEWAY = int(os.environ.get("PORTCULLIS_LAKE_TEST_REQUESTS", "300"))


@dataclass
class Pair:
    lake: Lake
    a: GatewayProcess
    b: GatewayProcess
    rules: Path
    confdir: Path

    def args(self, name: str) -> list[str]:
        return ["--lake", self.lake.catalog, "--lake-data", self.lake.data, "--lake-maintenance", "0",
                "--db", str(self.rules.parent / f"{name}.duckdb")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, confdir, postgres_dsn) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("lake")
    rules = tmp / "rules.yaml"
    rules.write_text(textwrap.dedent(NO_DELETES))
    lake = Lake.parse(postgres_dsn, str(tmp / "data"))
    p = Pair(lake, None, None, rules, confdir)  # type: ignore[arg-type]
    p.a = GatewayProcess(rules, confdir, p.args("a")).start()
    p.b = GatewayProcess(rules, confdir, p.args("b")).start()
    yield p
    p.a.stop()
    p.b.stop()


def agent(gateway: GatewayProcess, url: str, session: str, count: int, out: list[str],
          stop: threading.Event | None = None) -> None:
    with proxied_session(gateway) as http:
        for _ in range(count):
            if stop is not None and stop.is_set():
                return
            try:
                response = http.get(url, timeout=30, headers={"X-Portcullis-Session": session})
            except requests.RequestException:
                return  # the gateway was killed
            assert response.status_code == 200, response.text
            out.append(response.headers["X-Portcullis-Flow-Id"])


def test_two_gateways_one_lake_every_flow_exactly_once_while_an_analyst_queries(pair, upstream, tmp_path):
    tag = f"pair-{uuid.uuid4().hex[:8]}"
    total = 2 * PER_GATEWAY
    # An analyst's DuckDB process counts the rows every 50 ms meanwhile (the pinned extensions).
    analyst = start_analyst(pair.lake.attach_statement(), f"{tag}%", total,
                            extensions=extensions.install(tmp_path / "ext", pair.lake.extensions))
    sent: dict[str, list[str]] = {"a": [], "b": []}
    clients = []
    for name, gateway in (("a", pair.a), ("b", pair.b)):
        for index in range(4):
            clients.append(threading.Thread(target=agent, args=(
                gateway, upstream.url(f"/{name}/{index}"), f"{tag}-{name}", PER_GATEWAY // 4, sent[name])))
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(180)
    samples = [(count, distinct) for _, count, distinct, _ in analyst_result(analyst, timeout=150)["samples"]]
    assert all(count == distinct for count, distinct in samples)
    assert [c for c, _ in samples] == sorted(c for c, _ in samples)
    assert samples[-1][0] == total, samples[-5:]
    assert len(set(sent["a"])) == len(set(sent["b"])) == PER_GATEWAY
    # Through either gateway's socket (portcullis sql, the SQL page): the whole lake.
    for gateway in (pair.a, pair.b):
        rows = ask(gateway.db, "/query", {"sql": "SELECT session_id, count(*), count(DISTINCT id) FROM flows "
                                                  "WHERE session_id LIKE ? GROUP BY ALL ORDER BY 1",
                                          "params": [f"{tag}%"]})["rows"]
        assert rows == [[f"{tag}-a", PER_GATEWAY, PER_GATEWAY], [f"{tag}-b", PER_GATEWAY, PER_GATEWAY]]
    ids = ask(pair.a.db, "/query", {"sql": "SELECT id FROM flows WHERE session_id LIKE ?",
                                    "params": [f"{tag}%"]})["rows"]
    assert {row[0] for row in ids} == set(sent["a"]) | set(sent["b"])
    # Every event of these flows has its own key across both gateways, (gateway, seq),
    # and names the gateway that wrote it, though both gateways count seq from the same start.
    keys = ask(pair.a.db, "/query", {"sql": """
        SELECT count(*), count(DISTINCT (gateway, seq)), count(DISTINCT seq),
               count(*) FILTER (WHERE gateway LIKE '%a.duckdb' AND flow_id IN (SELECT unnest($a::VARCHAR[]))),
               count(*) FILTER (WHERE gateway LIKE '%b.duckdb' AND flow_id IN (SELECT unnest($b::VARCHAR[])))
        FROM events WHERE flow_id IN (SELECT id FROM flows WHERE session_id LIKE $tag)""",
        "params": {"tag": f"{tag}%", "a": sent["a"], "b": sent["b"]}})["rows"]
    events, distinct_keys, distinct_seqs, of_a, of_b = keys[0]
    assert events == distinct_keys == of_a + of_b >= 3 * total, keys
    print(f"{events} events of {total} flows from two gateways: {distinct_keys} distinct (gateway, seq) keys, "
          f"{distinct_seqs} distinct seq values")
    # The flows page's own store call works on the lake too (a flow and its events).
    flow = ask(pair.b.db, "/query", {"sql": "SELECT count(*) FROM events WHERE flow_id = ?",
                                                   "params": [sent["a"][0]]})
    assert flow["rows"][0][0] >= 3


def test_a_killed_gateway_loses_no_completed_flow_and_recovers_only_its_own(pair, upstream):
    upstream.routes["/slow"] = lambda seen: (time.sleep(2.0), Canned(200, b"slow"))[1]
    tag = f"kill-{uuid.uuid4().hex[:8]}"
    done_a: list[str] = []
    stop = threading.Event()
    agents = [threading.Thread(target=agent, args=(pair.a, upstream.url("/fast"), f"{tag}-a", 10_000, done_a, stop))
              for _ in range(4)]
    slow_b: list[str] = []
    slow = threading.Thread(target=agent, args=(pair.b, upstream.url("/slow"), f"{tag}-b", 1, slow_b))
    for thread in agents:
        thread.start()
    deadline = time.monotonic() + 20
    while len(done_a) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    slow.start()
    time.sleep(0.3)  # B's slow flow is in flight (received) while A dies and restarts
    pair.a.stop(signal.SIGKILL)
    completed = set(done_a)
    stop.set()
    for thread in agents:
        thread.join(30)
    pair.a = GatewayProcess(pair.rules, pair.confdir, pair.args("a")).start()
    slow.join(30)
    assert len(completed) >= 60 and len(slow_b) == 1
    # By id: a flow whose row was still queued in A at the kill is recorded from A's
    # journal on restart (decision error, reason gateway_restart), without its session.
    rows = ask(pair.a.db, "/query", {"sql": "SELECT id, count(*) FROM flows WHERE id IN "
                                            "(SELECT unnest($ids::VARCHAR[])) GROUP BY id",
                                     "params": {"ids": sorted(completed)}})["rows"]
    assert {row[0] for row in rows} == completed
    assert all(row[1] == 1 for row in rows)  # each once: the restart waited for A's old writer
    # A's restart closed A's open flows; B's flow, in flight meanwhile, finished normally.
    # (B commits its row a moment after it answered: polled.)
    b_flow = poll(lambda: ask(pair.b.db, "/query", {"sql": "SELECT decision, reason FROM flows WHERE id = ?",
                                                    "params": [slow_b[0]]})["rows"], bool)
    assert b_flow == [["allowed", None]]
    open_a = ask(pair.a.db, "/query", {"sql": """
        SELECT count(*) FROM events r WHERE r.kind = 'received'
        AND json_extract_string(r.detail, '$.gateway') LIKE '%a.duckdb'
        AND NOT EXISTS (SELECT 1 FROM flows f WHERE f.id = r.flow_id)"""})["rows"]
    assert open_a == [[0]]


def test_maintenance_runs_in_one_process_at_a_time_and_compacts(pair, tmp_path):
    store = Store(tmp_path / "maint.duckdb", lake=pair.lake)
    cur = store.cursor()
    try:
        old = datetime.utcnow() - timedelta(days=40)
        store.insert(cur, [{"id": f"old-{uuid.uuid4().hex}", "started_at": micros(old.timestamp()),
                            "decision": "allowed", "rules": []}], [])
        for batch in range(5):  # commits past the inlining limit each leave a Parquet file
            store.insert(cur, [{"id": f"m{batch}-{i}", "started_at": micros(time.time()),
                                "decision": "allowed", "rules": [], "session_id": "maint"}
                               for i in range(2500)], [])
        files_before = data_files(pair.lake)
        with maintenance.exclusive(pair.lake) as first:
            assert first
            with maintenance.exclusive(pair.lake) as second:
                assert not second  # a second gateway skips the round
            assert maintenance.Maintenance(store, 1, retain_days=30).run(cur) is None
        done = maintenance.Maintenance(store, 1, retain_days=30).run(cur, keep_s=0)
        assert done is not None and done["deleted_flows"] >= 1
        assert data_files(pair.lake) < files_before
        remaining = cur.execute("SELECT count(*) FROM flows WHERE session_id = 'maint'").fetchone()
        assert remaining == (12_500,)
        assert cur.execute("SELECT count(*) FROM flows WHERE started_at < now()::TIMESTAMP - INTERVAL 30 DAY"
                           ).fetchone() == (0,)
    finally:
        cur.close()
        store.close()


def data_files(lake: Lake) -> int:
    return sum(len([f for f in files if f.endswith(".parquet")]) for _, _, files in os.walk(lake.data))
