"""Event identity across gateways on one lake: the key is (gateway, seq) (issue 18).

Two writers (real Writer threads, each with its own Store, as two gateways' recording
processes have) record events into one lake at once: a local lake (SQLite catalog) and
one with its catalog in the real PostgreSQL of tests/support/postgres.py. Both count
seq from 1, so seq alone repeats; (gateway, seq) never does, and ``"at", gateway, seq``
orders every event. Recordings from before (schema version 2, no gateway column) are
upgraded in place, keep their rows, and their seq goes on increasing.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from recordings import extensions, schema
from recordings.export import export
from recordings.lake import Lake, prepare
from recordings.store import Store, gateway_name, micros
from recordings.writer import Writer

PER_WRITER = 600


def received(flow_id: str, at: float):
    return lambda seq: {"seq": seq, "flow_id": flow_id, "at": micros(at), "actor": "gateway",
                        "kind": "received", "detail": json.dumps({"n": flow_id})}


def two_writers_record(lake: Lake, tmp: Path) -> Store:
    """Gateways A and B write PER_WRITER events each, concurrently; returns a reader."""
    stores = [Store(tmp / f"{name}.duckdb", lake=lake, scope=f"host-{name}:{tmp / name}.duckdb")
              for name in ("a", "b")]
    writers = [Writer(store, batch_rows=50, batch_seconds=0.02) for store in stores]
    for writer in writers:
        writer.start()
    same_instant = time.time()

    def feed(writer: Writer, name: str) -> None:
        for index in range(PER_WRITER):
            # Every tenth event of both gateways at the very same "at": the order must
            # still be total (ties broken by gateway, then seq).
            at = same_instant if index % 10 == 0 else time.time()
            writer.put_event(received(f"{name}-{index}", at))
            if index % 100 == 0:
                time.sleep(0.01)

    threads = [threading.Thread(target=feed, args=(writer, name)) for writer, name in zip(writers, "ab", strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for writer in writers:
        assert writer.stop() == 0
    for store in stores:
        store.close()
    return Store(tmp / "reader.duckdb", lake=lake, scope="reader")


def check_keys(reader: Store, lake_name: str) -> None:
    cur = reader.cursor()
    try:
        total, keys, seqs = cur.execute(
            "SELECT count(*), count(DISTINCT (gateway, seq)), count(DISTINCT seq) FROM events").fetchone()
        assert total == keys == 2 * PER_WRITER, (total, keys)
        # What the old numbering gave (one counter per gateway, both from max(seq) + 1):
        # the same seq twice. The key is what makes an event unique.
        assert seqs < total
        gateways = cur.execute("SELECT gateway, count(*), min(seq), max(seq) FROM events GROUP BY ALL "
                               "ORDER BY 1").fetchall()
        assert [(g.split(":")[0], n) for g, n, _, _ in gateways] == [("host-a", PER_WRITER), ("host-b", PER_WRITER)]
        assert all(high - low + 1 == PER_WRITER for _, _, low, high in gateways)  # no gaps, none twice
        # Each gateway's own order is its writing order: the flows it was handed, in turn.
        for gateway, *_ in gateways:
            flows = [row[0] for row in cur.execute("SELECT flow_id FROM events WHERE gateway = ? ORDER BY seq",
                                                   [gateway]).fetchall()]
            name = gateway.split(":")[0][-1]
            assert flows == [f"{name}-{index}" for index in range(PER_WRITER)]
        # The documented order is total: no two events share ("at", gateway, seq).
        ordered = cur.execute(f"SELECT count(DISTINCT ({schema.EVENT_ORDER})) FROM events").fetchone()
        assert ordered == (2 * PER_WRITER,)
        ties = cur.execute(f'SELECT gateway, seq FROM events WHERE "at" = (SELECT min("at") FROM events) '
                           f"ORDER BY {schema.EVENT_ORDER}").fetchall()
        assert len(ties) >= 2 and ties == sorted(ties), lake_name
    finally:
        cur.close()


def test_two_writers_on_one_local_lake_give_no_duplicate_event_keys(tmp_path):
    reader = two_writers_record(Lake.parse(str(tmp_path / "one.lake")), tmp_path)
    try:
        check_keys(reader, "local")
    finally:
        reader.close()


def test_two_writers_on_one_postgres_lake_give_no_duplicate_event_keys(postgres, tmp_path):
    lake = Lake.parse(postgres.new_database("events"), str(tmp_path / "data"))
    reader = two_writers_record(lake, tmp_path)
    try:
        check_keys(reader, "postgres")
    finally:
        reader.close()


def test_a_restarted_writer_continues_its_own_numbering(tmp_path):
    lake = Lake.parse(str(tmp_path / "again.lake"))
    for _ in range(2):
        store = Store(tmp_path / "a.duckdb", lake=lake)
        writer = Writer(store, batch_seconds=0.02)
        writer.start()
        for index in range(3):
            writer.put_event(received(f"f{index}", time.time()))
        assert writer.stop() == 0
        store.close()
    other = Store(tmp_path / "b.duckdb", lake=lake)
    try:
        cur = other.cursor()
        assert other.next_seq(cur) == 1  # another gateway's numbers are its own
        rows = cur.execute("SELECT gateway, seq FROM events ORDER BY seq").fetchall()
        cur.close()
        assert rows == [(gateway_name(tmp_path / "a.duckdb"), seq) for seq in range(1, 7)]
    finally:
        other.close()


def v2_events(con: duckdb.DuckDBPyConnection) -> None:
    """A recording as version 2 left it: events without a gateway, seq 1..3."""
    schema.migrate(con, upto=2)
    for seq in (1, 2, 3):
        con.execute("INSERT INTO events (seq, flow_id, \"at\", actor, kind) VALUES "
                    "(?, 'old', TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (?) SECOND, 'gateway', 'received')",
                    [seq, seq])


@pytest.mark.parametrize("kind", ["file", "lake"])
def test_an_older_recording_is_upgraded_and_its_seq_goes_on(tmp_path, kind):
    db = tmp_path / "old.duckdb"
    lake = Lake.parse(str(tmp_path / "old.lake")) if kind == "lake" else None
    if lake is None:
        con = duckdb.connect(str(db))
        v2_events(con)
        con.close()
    else:  # a lake a version-2 gateway created: the same tables, in the lake
        prepare(lake)
        con = duckdb.connect(config={"extension_directory": str(extensions.install(tmp_path / "ext")),
                                     "autoinstall_known_extensions": "false"})
        con.execute(f"ATTACH '{lake.uri}' AS old (DATA_PATH '{lake.data}')")
        con.execute("USE old")
        v2_events(con)
        con.close()
    store = Store(db, lake=lake)
    try:
        assert store.previous_version == 2
        cur = store.cursor()
        assert store.next_seq(cur) == 4
        store.insert(cur, [], [received("new", time.time())(store.next_seq(cur))])
        rows = cur.execute(f"SELECT flow_id, gateway, seq FROM events ORDER BY {schema.EVENT_ORDER}").fetchall()
        cur.close()
        assert rows == [("old", None, 1), ("old", None, 2), ("old", None, 3), ("new", gateway_name(db), 4)]
        assert [e["seq"] for e in store.events("old")] == [1, 2, 3]
        assert store.events("new")[0]["gateway"] == gateway_name(db)
        versions = store.query("SELECT version FROM schema_version ORDER BY 1")[1]
        assert versions == [(version,) for version, _ in schema.MIGRATIONS]
    finally:
        store.close()


def test_exports_and_the_timeline_order_events_by_at_gateway_seq(tmp_path):
    store = Store(tmp_path / "x.duckdb")
    try:
        cur = store.cursor()
        at = micros(time.time())
        # One flow whose events two gateways wrote at the same instant (a replay's
        # `replayed` event comes from the gateway that replayed), inserted out of order.
        store.insert(cur, [], [
            {"seq": 9, "flow_id": "f", "at": at, "kind": "replayed", "gateway": "gw-b"},
            {"seq": 7, "flow_id": "f", "at": at, "kind": "completed", "gateway": "gw-a"},
            {"seq": 5, "flow_id": "f", "at": at, "kind": "received", "gateway": "gw-a"},
        ])
        expected = [("gw-a", 5), ("gw-a", 7), ("gw-b", 9)]
        assert [(e["gateway"], e["seq"]) for e in store.events("f")] == expected
        timeline = cur.execute("SELECT gateway, seq FROM flow_timeline WHERE flow_id = 'f'").fetchall()
        assert timeline == expected
        cur.close()
        out = export(store, date(2000, 1, 1), "jsonl", tmp_path / "out")
        assert out["events"] == 3
        lines = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
        assert [(line["gateway"], line["seq"]) for line in lines] == expected
    finally:
        store.close()
