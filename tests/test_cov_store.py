"""Store and export error paths on real DuckDB files (issue 13): bad settings, missing or
unreadable recordings, a file in place of the directory, reopen/close after a broken
connection, retention rollback, transient lake conflicts, export argument checks."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import duckdb
import pytest

from recordings import store as store_module
from recordings.export import export, parse_since
from recordings.store import DuckDBSettings, Store, StoreError, _batch, _retrying, micros


def _flow(flow_id: str, started: float) -> dict:
    return {"id": flow_id, "started_at": micros(started), "ended_at": micros(started + 0.01),
            "duration_ms": 10.0, "method": "GET", "scheme": "http", "host": "api.example.com",
            "port": 80, "path": "/v1/x", "decision": "allowed", "rules": []}


@pytest.mark.parametrize("kwargs", [{"memory_limit": "lots"}, {"cache_target": "1 tonne"},
                                    {"threads": 0}, {"threads": 65}])
def test_bad_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        DuckDBSettings(**kwargs)


def test_read_only_missing_recording_is_refused(tmp_path) -> None:
    with pytest.raises(StoreError, match="no such recording"):
        Store(tmp_path / "absent.duckdb", read_only=True)


def test_parent_that_is_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the directory"):
        Store(tmp_path / "file" / "rec.duckdb")


def test_not_a_duckdb_file_is_refused(tmp_path) -> None:
    path = tmp_path / "garbage.duckdb"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(StoreError, match="cannot open"):
        Store(path)


def test_read_only_database_without_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "plain.duckdb"
    duckdb.connect(str(path)).close()
    with pytest.raises(StoreError, match="schema version 0"):
        Store(path, read_only=True)


def test_configure_trim_reopen_and_close_after_a_closed_connection(tmp_path) -> None:
    store = Store(tmp_path / "rec.duckdb")
    store.configure(DuckDBSettings(memory_limit="256MB", threads=2))
    assert store.settings.threads == 2
    _, rows = store.query("SELECT current_setting('threads')")
    assert rows == [(2,)]
    cur = store.cursor()
    store.insert(cur, [_flow("f1", 1_700_000_000.0)], [])
    cur.close()
    assert store.trim_cache() is True
    store._con.close()  # as after a fatal write error: every statement now fails
    store.reopen()  # closing the dead connection must not raise
    assert store.flow("f1")["id"] == "f1"
    store._con.close()
    store.close()  # CHECKPOINT on a closed connection is skipped, not raised
    reader = Store(tmp_path / "rec.duckdb", read_only=True)
    try:
        assert reader.trim_cache() is False  # a reader never trims
        assert reader.flow("f1") is not None
    finally:
        reader.close()


def test_retention_rolls_back_when_a_delete_fails(tmp_path) -> None:
    store = Store(tmp_path / "rec.duckdb")
    try:
        cur = store.cursor()
        store.insert(cur, [_flow("old", 1_000_000_000.0)], [])

        class Failing:
            """A cursor whose second DELETE fails (a full disk, say)."""

            def __init__(self, inner) -> None:
                self.inner, self.deletes = inner, 0

            def execute(self, sql, *args):
                if sql.startswith("DELETE"):
                    self.deletes += 1
                    if self.deletes == 2:
                        raise duckdb.IOException("No space left on device")
                return self.inner.execute(sql, *args)

        with pytest.raises(duckdb.IOException):
            store.delete_older_than(Failing(cur), 30)
        assert store.flow("old") is not None  # rolled back, nothing half-deleted
        flows, _, _ = store.delete_older_than(cur, 30)
        assert flows == 1 and store.flow("old") is None
        cur.close()
    finally:
        store.close()


def test_retrying_retries_transient_conflicts_only(monkeypatch) -> None:
    monkeypatch.setattr(store_module, "RETRY_PAUSE_S", 0.0)
    calls: list[int] = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise duckdb.TransactionException("Catalog write-write conflict")
        return "done"

    assert _retrying(flaky) == "done" and len(calls) == 3

    def broken():
        raise duckdb.CatalogException("no such table")

    with pytest.raises(duckdb.CatalogException):
        _retrying(broken)

    def always():
        raise duckdb.TransactionException("database is locked")

    with pytest.raises(duckdb.TransactionException):
        _retrying(always)


def test_batch_replaces_lone_surrogates() -> None:
    text = _batch([{"id": "a\udc80b"}], {"id": "VARCHAR"})
    text.encode("utf-8")  # would raise if the surrogate survived
    assert "a?b" in text


def test_parse_since_accepts_dates_and_zoned_timestamps() -> None:
    assert parse_since("2026-01-02") == datetime(2026, 1, 2)
    zoned = parse_since("2026-01-02T03:00:00+02:00")
    assert zoned == datetime(2026, 1, 2, 1, 0) and zoned.tzinfo is None
    with pytest.raises(ValueError, match="expected a date"):
        parse_since("yesterday")


def test_export_checks_format_and_accepts_a_date(tmp_path) -> None:
    store = Store(tmp_path / "rec.duckdb")
    try:
        cur = store.cursor()
        now = datetime.now(UTC).timestamp()
        store.insert(cur, [_flow("new", now), _flow("old", now - 86400 * 10)], [])
        cur.close()
        with pytest.raises(ValueError, match="unknown export format"):
            export(store, date.today(), "csv", tmp_path / "out")
        since = (datetime.now(UTC) - timedelta(days=1)).date()
        result = export(store, since, "jsonl", tmp_path / "out")
        assert result["flows"] == 1 and result["events"] == 0
        lines = (tmp_path / "out" / "flows.jsonl").read_text().splitlines()
        assert len(lines) == 1 and '"new"' in lines[0]
    finally:
        store.close()
