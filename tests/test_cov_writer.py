"""Writer failure paths on a real DuckDB file (issue 13): a commit that fails (disk full)
and heals, rows dropped past max_pending, a row that cannot be encoded, an invalidated
database reopened, out-of-memory commits that stop analysts, failed retention/trim."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

from recordings.store import Store, micros
from recordings.writer import Writer, retain


def _flow(flow_id: str, started: float | None = None) -> dict:
    started = time.time() if started is None else started
    return {"id": flow_id, "started_at": micros(started), "ended_at": micros(started + 0.01),
            "duration_ms": 10.0, "method": "GET", "scheme": "http", "host": "api.example.com",
            "port": 80, "path": "/v1/x", "decision": "allowed", "rules": []}


class Flaky:
    """A real Store whose next inserts raise the queued exceptions."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.errors: list[BaseException] = []
        self.reopened = 0
        self.interrupts = 0
        self.stop_analysts = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def insert(self, cur, flows, events):
        if self.errors:
            raise self.errors.pop(0)
        return self.inner.insert(cur, flows, events)

    def reopen(self) -> None:
        self.reopened += 1
        self.inner.reopen()

    def interrupt_analysts(self, reason) -> int:
        self.interrupts += 1
        return self.stop_analysts


@pytest.fixture
def flaky(tmp_path):
    store = Store(tmp_path / "rec.duckdb")
    yield Flaky(store)
    store.close()


def _barrier(writer: Writer) -> bool:
    done, result = threading.Event(), []
    writer.barrier(lambda ok: (result.append(ok), done.set()))
    assert done.wait(5), "barrier never answered"
    return result[0]


def _count(store: Flaky) -> int:
    return store.inner.query("SELECT count(*) FROM flows")[1][0][0]


def test_failed_commit_answers_false_then_heals(flaky, caplog) -> None:
    flaky.errors = [duckdb.IOException("No space left on device\nmore"), duckdb.IOException("still full")]
    writer = Writer(flaky, batch_seconds=0.01, retry_seconds=0.05)
    writer.start()
    writer.put_flow(lambda: _flow("f1"))
    assert _barrier(writer) is False
    assert writer.failure in ("No space left on device", "still full") and not writer.healthy
    deadline = time.monotonic() + 5
    while not writer.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.healthy and _barrier(writer) is True
    assert _count(flaky) == 1 and writer.written == 1
    assert "recording failed" in caplog.text and "works again" in caplog.text
    assert writer.stop(5) == 0


def test_rows_past_max_pending_are_dropped_and_counted_lost(flaky, caplog) -> None:
    flaky.errors = [duckdb.IOException("disk full")] * 1000
    writer = Writer(flaky, batch_seconds=0.01, retry_seconds=0.02, max_pending=2)
    writer.start()
    for n in range(5):
        writer.put_flow(lambda n=n: _flow(f"f{n}"))
    writer.barrier(lambda ok: None)
    deadline = time.monotonic() + 5
    while writer.dropped < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.dropped == 3 and "rows dropped" in caplog.text
    assert _barrier(writer) is False  # unhealthy: a barrier is refused at once
    flaky.errors.clear()  # the disk has room again: the two kept rows are written
    deadline = time.monotonic() + 5
    while not writer.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.healthy and _barrier(writer) is True
    assert _count(flaky) == 2
    assert writer.stop(5) == 3  # the dropped rows count as lost


def test_a_row_that_cannot_be_encoded_is_skipped(flaky, caplog) -> None:
    writer = Writer(flaky, batch_seconds=0.01)
    writer.start()

    def broken():
        raise KeyError("bug")

    writer.put_flow(broken)
    writer.put_flow(lambda: _flow("good"))
    writer.put_event(lambda seq: {"seq": seq, "flow_id": "good", "at": micros(time.time()),
                                  "actor": "gateway", "kind": "k", "detail": "{}"})
    assert _barrier(writer) is True
    assert _count(flaky) == 1 and writer.written == 2
    assert "could not encode a row" in caplog.text
    writer.stop(5)


def test_an_invalidated_database_is_reopened(flaky) -> None:
    flaky.errors = [duckdb.FatalException("database has been invalidated")]
    writer = Writer(flaky, batch_seconds=0.01, retry_seconds=0.02)
    writer.start()
    writer.put_flow(lambda: _flow("f1"))
    assert _barrier(writer) is False
    deadline = time.monotonic() + 5
    while not (writer.healthy and flaky.reopened) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flaky.reopened == 1
    assert _barrier(writer) is True and _count(flaky) == 1
    writer.stop(5)


def test_out_of_memory_commit_stops_analysts_and_retries(flaky) -> None:
    flaky.stop_analysts = 1
    flaky.errors = [duckdb.OutOfMemoryException("oom")]
    writer = Writer(flaky, batch_seconds=0.01)
    writer.start()
    writer.put_flow(lambda: _flow("f1"))
    assert _barrier(writer) is True
    assert flaky.interrupts == 1 and _count(flaky) == 1
    writer.stop(5)


def test_out_of_memory_without_analysts_fails_the_commit(flaky) -> None:
    flaky.errors = [duckdb.OutOfMemoryException("oom")]
    writer = Writer(flaky, batch_seconds=0.01, retry_seconds=0.02)
    writer.start()
    writer.put_flow(lambda: _flow("f1"))
    assert _barrier(writer) is False and flaky.interrupts == 1
    assert writer.failure == "oom"
    writer.stop(5)


def test_retention_and_trim_failures_are_logged_not_raised(flaky, caplog) -> None:
    class Broken:
        def execute(self, *args):
            raise duckdb.IOException("disk gone")

    assert retain(flaky.inner, Broken(), 30) == (0, 0)
    assert "retention failed" in caplog.text

    def bad_trim():
        raise duckdb.IOException("cannot trim")

    flaky.trim_cache = bad_trim
    cur = flaky.inner.cursor()
    flaky.inner.insert(cur, [_flow("old", 1_000_000_000.0)], [])
    cur.close()
    writer = Writer(flaky, batch_seconds=0.01, retain_days=30)
    writer._next_retention = 0.0
    writer._next_trim = 0.0
    writer.start()
    deadline = time.monotonic() + 5
    while flaky.inner.flow("old") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flaky.inner.flow("old") is None  # retention ran on the writer thread
    writer.stop(5)
    assert "could not trim" in caplog.text
