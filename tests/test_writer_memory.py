"""The recording comes before analysis: when a commit runs out of DuckDB memory while
analysts' queries run, the writer stops those queries and commits again (in process,
with a store that runs out of memory on demand)."""

from __future__ import annotations

import duckdb
import pytest

from recordings.writer import Writer


class OutOfMemoryStore:
    """Fails the first ``failures`` inserts with DuckDB's out-of-memory error."""

    def __init__(self, failures: int, analysts: int) -> None:
        self.failures = failures
        self.analysts = analysts
        self.inserted: list[tuple[list, list]] = []
        self.interrupted: list[object] = []

    def insert(self, cur, flows, events) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block")
        self.inserted.append((flows, events))

    def interrupt_analysts(self, why) -> int:
        self.interrupted.append(why)
        stopped, self.analysts = self.analysts, 0
        return stopped


def test_a_commit_out_of_memory_stops_the_analysts_and_is_retried():
    store = OutOfMemoryStore(failures=2, analysts=1)
    Writer(store)._insert(None, [{"id": "f1"}], [])
    assert store.inserted == [([{"id": "f1"}], [])]
    [why] = store.interrupted
    assert (why.code, why.status) == ("query_memory", 413) and "recorder needed the memory" in why.message


def test_without_analysts_to_stop_the_error_is_the_writers():
    store = OutOfMemoryStore(failures=1, analysts=0)
    with pytest.raises(duckdb.OutOfMemoryException):
        Writer(store)._insert(None, [{"id": "f1"}], [])
    assert store.inserted == []


def test_memory_that_never_comes_back_fails_after_the_grace_period():
    store = OutOfMemoryStore(failures=10_000, analysts=1)
    with pytest.raises(duckdb.OutOfMemoryException):
        Writer(store)._insert(None, [{"id": "f1"}], [])
    assert store.inserted == [] and len(store.interrupted) == 1
