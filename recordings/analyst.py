"""Limits on analysts' queries, so the SQL page and ``portcullis sql`` cannot hurt the gateway.

An analyst's SELECT runs in the gateway process, on the same DuckDB instance the recorder
writes to (one process may hold the file, and DuckDB settings such as ``memory_limit``
and ``threads`` belong to the instance, not to a cursor). Unbounded, one ``string_agg``
took the gateway from 160 MB to 10 GB, and a query kept running after its browser left.
The bounds, each answered with a JSON error that names the limit:

* memory: the instance's ``memory_limit`` (recordings.store.DuckDBSettings) makes DuckDB
  fail the query with an out-of-memory error (``query_memory``, 413) instead of growing;
  operators spill to ``<db>.tmp``. The recorder keeps priority: if a commit runs out of
  memory, the writer interrupts every running analyst query and retries
  (:meth:`recordings.store.Store.interrupt_analysts`).
* time: DuckDB has no statement timeout, so a watchdog thread calls the cursor's
  ``interrupt()`` after ``timeout_s`` (``query_timeout``, 408).
* the client leaving: the same watchdog polls ``gone()`` (the CLI's socket or the
  browser's connection closed) and interrupts (``query_cancelled``, 499).
* result size: rows are fetched in chunks and counted in Python, where DuckDB's limit
  does not reach (``result_too_large``, 413).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

log = logging.getLogger("portcullis.recorder")

#: Fetch this many rows at a time while counting the result's size.
FETCH_ROWS = 2048


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 30.0
    result_bytes: int = 64 * 2**20
    poll_s: float = 0.05


DEFAULT_LIMITS = Limits()


class LimitHit(Exception):
    """An analyst query was stopped by a limit; ``code``/``status`` go into the JSON error."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def as_json(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


class Watchdog:
    """Interrupts ``cur`` on timeout, on ``gone()``, or on :meth:`interrupt` (the writer)."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, limits: Limits,
                 gone: Callable[[], bool] | None = None) -> None:
        self.cur = cur
        self.limits = limits
        self.gone = gone
        self.reason: LimitHit | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="portcullis-sql-watchdog",
                                        daemon=True)

    def __enter__(self) -> Watchdog:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        self._done.set()
        self._thread.join()
        if isinstance(exc, duckdb.InterruptException):
            raise self.reason or LimitHit("query_cancelled", 499, "the query was interrupted") from None
        if isinstance(exc, duckdb.OutOfMemoryException):
            raise LimitHit("query_memory", 413, "the query needed more memory than the recording "
                           f"database may use (--db-memory-limit, option portcullis_db_memory_limit): {str(exc).splitlines()[0]}"
                           ) from None

    def interrupt(self, reason: LimitHit) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            if not self._done.is_set():
                self.cur.interrupt()
                log.warning("analyst query stopped (%s): %s", reason.code, reason.message)

    def _watch(self) -> None:
        deadline = self._started + self.limits.timeout_s
        while not self._done.wait(self.limits.poll_s):
            if time.monotonic() >= deadline:
                self.interrupt(LimitHit("query_timeout", 408, f"the query ran longer than "
                                        f"{self.limits.timeout_s:g} s (--sql-timeout, option portcullis_sql_timeout)"))
                return
            if self.gone is not None and self.gone():
                self.interrupt(LimitHit("query_cancelled", 499, "the client went away; the query was stopped"))
                return


def fetch_bounded(cur: duckdb.DuckDBPyConnection, limits: Limits) -> list[tuple]:
    """All rows of the executed statement, refusing results larger than ``result_bytes``."""
    rows: list[tuple] = []
    size = 0
    while chunk := cur.fetchmany(FETCH_ROWS):
        size += sum(_size(value) for row in chunk for value in row)
        if size > limits.result_bytes:
            raise LimitHit("result_too_large", 413, f"the result is larger than "
                           f"{limits.result_bytes // 2**20} MiB (the analyst result limit); "
                           "select fewer rows or columns, or write it to a file")
        rows.extend(chunk)
    return rows


def _size(value: Any) -> int:
    """A cheap estimate of a value's size: its length for text and bytes, else 8 bytes."""
    if isinstance(value, str | bytes | bytearray):
        return len(value) + 8
    if isinstance(value, list | tuple):
        return sum(_size(v) for v in value) + 8
    if isinstance(value, dict):
        return sum(_size(k) + _size(v) for k, v in value.items()) + 8
    return 8
