"""Fresh gateways racing on an empty lake catalog: the first-time setup runs once (issue 18).

Several recording processes are started at the same moment against a new, empty
PostgreSQL database (the real server of tests/support/postgres.py) or an empty local
lake directory. Each attaches the lake (DuckLake creates its ``ducklake_*`` catalog
tables on the first ATTACH), migrates the recording schema and writes a flow and an
event. Serialised by the setup lock (recordings/lake.py: ``setup_lock``), every one
starts, each schema version is applied exactly once, and every row is there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from recordings import lake as lakes
from recordings import schema
from recordings.lake import Lake
from recordings.store import Store

ROOT = Path(__file__).resolve().parent.parent

#: One fresh gateway's recording process, as far as the lake is concerned: open the
#: store read-write (attach, create, migrate) when told to go, write, report. With
#: "wait", it says "ready" once it has imported everything and opens on a line on stdin.
OPENER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from recordings.lake import Lake
from recordings.store import Store, micros
lake, data, db, go = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
if go == "wait":
    print("ready", flush=True)
    sys.stdin.readline()
began = time.monotonic()
store = Store(db, lake=Lake.parse(lake, data or ""), scope=f"racer:{db}")
opened = time.monotonic() - began
cur = store.cursor()
flow = os.path.basename(db)
store.insert(cur, [{"id": flow, "decision": "allowed", "rules": []}],
             [{"seq": store.next_seq(cur), "flow_id": flow, "kind": "received", "at": micros(time.time())}])
cur.close()
store.close()
print(json.dumps({"previous_version": store.previous_version, "open_s": round(opened, 3)}))
"""

RACERS = 3


def race(lake: str, data: str, tmp: Path) -> list[dict]:
    """RACERS processes that all open the lake at the same instant; their reports."""
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(ROOT), lake, data,
                               str(tmp / f"gw{index}.duckdb"), "wait"],
                              text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for index in range(RACERS)]
    reports = []
    try:
        # The go once every interpreter has started and imported duckdb (each says so), not
        # at a fixed time: the same instant for all, however long the starts took.
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.communicate()[1][-3000:]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # the others, when one failed: not left waiting for a go
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"{RACERS} fresh gateways on an empty catalog: open (attach + create + migrate) took "
          f"{sorted(r['open_s'] for r in reports)} s")
    return reports


def check(lake: Lake, tmp: Path, reports: list[dict]) -> None:
    # Exactly one of them created the schema; the others found it at the latest version.
    assert sorted(r["previous_version"] for r in reports) == [0] + [schema.SCHEMA_VERSION] * (RACERS - 1)
    reader = Store(tmp / "reader.duckdb", read_only=True, lake=Lake.parse(lake.catalog, "", reading=True))
    try:
        versions = reader.query("SELECT version, count(*) FROM schema_version GROUP BY ALL ORDER BY 1")[1]
        assert versions == [(version, 1) for version, _ in schema.MIGRATIONS]
        flows = reader.query("SELECT id FROM flows ORDER BY id")[1]
        assert flows == [(f"gw{index}.duckdb",) for index in range(RACERS)]
        keys = reader.query("SELECT count(*), count(DISTINCT (gateway, seq)) FROM events")[1]
        assert keys == [(RACERS, RACERS)]
    finally:
        reader.close()


def test_fresh_gateways_racing_on_an_empty_postgres_catalog_set_it_up_once(postgres, tmp_path):
    dsn = postgres.new_database("race")
    data = tmp_path / "data"
    reports = race(dsn, str(data), tmp_path)
    check(Lake.parse(dsn, str(data)), tmp_path, reports)
    with psycopg.connect(dsn) as pg:  # the lock is released: nobody holds it any more
        held = pg.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    assert held == (0,)


def test_fresh_gateways_racing_on_an_empty_local_lake_set_it_up_once(tmp_path):
    root = tmp_path / "race.lake"
    reports = race(str(root), "", tmp_path)
    check(Lake.parse(str(root)), tmp_path, reports)


def test_the_setup_lock_serialises_and_is_released(postgres, tmp_path):
    """Held by one session, the lock makes a second wait until it is let go."""
    dsn = postgres.new_database("lock")
    lake = Lake.parse(dsn, str(tmp_path / "data"))
    with lakes.setup_lock(lake):
        opener = subprocess.Popen([sys.executable, "-c", OPENER, str(ROOT), dsn, str(tmp_path / "data"),
                                   str(tmp_path / "late.duckdb"), "now"],
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with psycopg.connect(dsn, autocommit=True) as pg:
            deadline = time.monotonic() + 30
            while True:  # the opener is waiting for our lock, not past it
                waiting = pg.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                     "AND NOT granted").fetchone()
                if waiting == (1,) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert waiting == (1,)
        assert opener.poll() is None
    out, err = opener.communicate(timeout=120)
    assert opener.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["previous_version"] == 0


@pytest.mark.parametrize("shared", [False, True])
def test_a_setup_lock_that_cannot_be_had_fails_closed_with_a_message(tmp_path, shared, monkeypatch):
    if shared:
        lake = Lake.parse("postgresql://nobody@127.0.0.1:1/none", str(tmp_path / "data"))
        with pytest.raises(lakes.LakeError, match="setup lock"), lakes.setup_lock(lake):
            pass
    else:
        lake = Lake.parse(str(tmp_path / "file-in-the-way"))
        Path(lake.catalog).write_text("not a directory")
        with pytest.raises(lakes.LakeError, match="setup lock"), lakes.setup_lock(lake):
            pass
