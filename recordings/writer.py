"""The single writer thread: drains a queue and inserts rows in batches.

Hooks on mitmproxy's event loop only ever call :meth:`Writer.put_flow`,
:meth:`Writer.put_event` and :meth:`Writer.barrier`, which append to a deque and never
block. The thread wakes every ``batch_seconds``, or earlier when ``batch_rows`` rows are
queued or a barrier arrives, and commits everything queued in one transaction (one
INSERT per table). Row encoding and redaction happen here, not on the event loop.

When a commit fails, the batch is kept, barriers are answered ``False`` (so the
gateway can stop forwarding) and the write is retried every ``retry_seconds`` until it
works again. Rows are only ever lost if the process dies, or if more than
``max_pending`` pile up while writing is impossible (then the loss is logged).

Each event gets its ``seq`` when it is queued, from this writer's own counter, which
starts after the highest seq this writer (``store.gateway``) wrote before; the store adds
``gateway`` to the row. ``(gateway, seq)`` is the event's key, unique across gateways on
one lake (``Store.next_seq`` says why this and not a shared counter).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

from recordings import native_heap
from recordings.analyst import LimitHit
from recordings.store import Store, StoreError

log = logging.getLogger("portcullis.recorder")

RowMaker = Callable[[], dict[str, Any]]


@dataclass
class Barrier:
    """Answered with True once everything queued before it is committed, else False."""

    callback: Callable[[bool], None]


@dataclass
class _Event:
    seq: int
    make: Callable[[int], dict[str, Any]]


_STOP = object()


class Writer:
    def __init__(self, store: Store, batch_rows: int = 500, batch_seconds: float = 0.2,
                 retry_seconds: float = 0.5, max_pending: int = 200_000, retain_days: int = 0,
                 ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.retry_seconds = retry_seconds
        self.max_pending = max_pending
        self.retain_days = retain_days
        self.failure: str | None = None  # why writing fails right now; None when healthy
        self.written = 0
        self.cpu_seconds = 0.0
        self.dropped = 0
        #: A lake's upkeep (recordings/maintenance.py), run between commits; None for a file.
        self.maintenance: Any = None
        # A deque, not a queue.Queue: appending wakes nobody. Waking the writer for every
        # row made it fight the event loop for the GIL on each request.
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._flows: list[RowMaker | dict[str, Any]] = []
        self._events: list[_Event | dict[str, Any]] = []
        self._waiters: list[Barrier] = []
        self._retry_at = 0.0
        self._next_retention = time.time() + 86_400
        self._next_trim = time.monotonic() + native_heap.TRIM_EVERY_S
        self._stopping = False
        self._give_up_at = 0.0
        self._seq = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="portcullis-recorder", daemon=True)

    @property
    def healthy(self) -> bool:
        return self.failure is None

    # --- called from any thread -------------------------------------------------

    def put_flow(self, make_row: RowMaker) -> None:
        """Queue a flows row; ``make_row`` runs on the writer thread (encoding costs CPU)."""
        self._put(make_row)

    def put_event(self, make_row: Callable[[int], dict[str, Any]]) -> None:
        """Queue an events row; ``make_row(seq)`` runs on the writer thread."""
        self._put(_Event(next(self._seq), make_row))  # count() is atomic under the GIL

    def barrier(self, callback: Callable[[bool], None]) -> None:
        self._queue.append(Barrier(callback))
        self._wake.set()

    def _put(self, item: Any) -> None:
        self._queue.append(item)  # deque.append is atomic
        if len(self._queue) >= self.batch_rows:
            self._wake.set()

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        cur = self.store.cursor()
        try:
            self._seq = itertools.count(self.store.next_seq(cur))
        finally:
            cur.close()
        self._thread.start()

    def stop(self, timeout: float = 30) -> int:
        """Write everything queued, then end the thread. Returns the number of rows lost."""
        if self._thread.is_alive():
            self._queue.append(_STOP)
            self._wake.set()
            self._thread.join(timeout)
        lost = len(self._flows) + len(self._events) + len(self._queue) + self.dropped
        if lost:
            log.error("recording: %d rows could not be written before exit (%s)", lost, self.failure)
        return lost

    # --- the thread -------------------------------------------------------------

    def _run(self) -> None:
        cur = self.store.cursor()
        while True:
            self.cpu_seconds = time.thread_time()  # this thread's CPU so far (for /health)
            self._collect()
            if self._flows or self._events or self._waiters:
                cur = self._flush(cur)
            if self._stopping and (self.healthy or not self._flows and not self._events):
                break
            if self._stopping and time.monotonic() > self._give_up_at:
                break
            self._maybe_retain(cur)
            if self.maintenance is not None and self.healthy:
                self.maintenance.maybe_run(cur)
            self._maybe_trim()
        cur.close()

    def _collect(self) -> None:
        """Sleep until a commit is due (batch_seconds, a full batch, a barrier, stop, or the
        next retry), then take everything queued."""
        if self.healthy:
            timeout = self.batch_seconds
        else:
            timeout = max(0.0, self._retry_at - time.monotonic())
        if not self._stopping:
            self._wake.wait(timeout)
        self._wake.clear()
        while True:
            try:
                self._take(self._queue.popleft())
            except IndexError:
                break
        if not self.healthy:
            self._answer_waiters(False)
            if self._stopping:
                time.sleep(max(0.0, self._retry_at - time.monotonic()))

    def _take(self, item: Any) -> None:
        if item is _STOP:
            self._stopping = True
            self._give_up_at = time.monotonic() + 5
        elif isinstance(item, Barrier):
            self._waiters.append(item)
        elif len(self._flows) + len(self._events) >= self.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error("recording: %d rows dropped: writing has failed for too long (%s)",
                          self.dropped, self.failure)
        elif isinstance(item, _Event):
            self._events.append(item)
        else:
            self._flows.append(item)

    def _flush(self, cur: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        # Encode once: a failed batch is retried with the rows already built.
        flows = self._flows = [row for row in map(self._make, self._flows) if row is not None]
        events = self._events = [row for row in map(self._make, self._events) if row is not None]
        try:
            self._insert(cur, flows, events)
        except (duckdb.Error, StoreError) as exc:
            return self._failed(cur, exc)
        self.written += len(flows) + len(events)
        self._flows.clear()
        self._events.clear()
        if not self.healthy:
            log.warning("recording works again; %d queued rows written", len(flows))
            self.failure = None
        self._answer_waiters(True)
        return cur

    def _insert(self, cur: duckdb.DuckDBPyConnection, flows: list[dict[str, Any]],
                events: list[dict[str, Any]]) -> None:
        """Insert; recording comes before analysis: when a commit runs out of memory while
        analysts' queries run, those queries are stopped and the commit is tried again."""
        try:
            self.store.insert(cur, flows, events)
        except duckdb.OutOfMemoryException:
            stopped = self.store.interrupt_analysts(LimitHit(
                "query_memory", 413, "the query was stopped: the recorder needed the memory "
                "it held (portcullis_db_memory_limit)"))
            if not stopped:
                raise
            log.warning("recording: a commit ran out of memory; stopped %d analyst queries", stopped)
            deadline = time.monotonic() + 2.0
            while True:
                time.sleep(0.05)  # an interrupted query releases its memory as it unwinds
                try:
                    self.store.insert(cur, flows, events)
                    return
                except duckdb.OutOfMemoryException:
                    if time.monotonic() > deadline:
                        raise

    def _make(self, item: RowMaker | _Event | dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(item, dict):
            return item  # already built (a retry)
        try:
            return item.make(item.seq) if isinstance(item, _Event) else item()
        except Exception:  # noqa: BLE001 - a bug in encoding one row must not stop recording
            log.exception("recording: could not encode a row")
            return None

    def _failed(self, cur: duckdb.DuckDBPyConnection, exc: Exception) -> duckdb.DuckDBPyConnection:
        if self.healthy:
            log.error("recording failed: %s", exc)
        self.failure = str(exc).splitlines()[0]
        self._retry_at = time.monotonic() + self.retry_seconds
        self._answer_waiters(False)
        # A lake's catalog connection can be left in an aborted transaction (PostgreSQL
        # refuses every later statement until a rollback DuckLake does not send): start
        # afresh, as for a file DuckDB invalidated.
        if "invalidated" in str(exc).lower() or isinstance(exc, duckdb.FatalException) \
                or getattr(self.store, "lake", None) is not None:
            try:
                cur.close()
                self.store.reopen()
                return self.store.cursor()
            except (duckdb.Error, StoreError) as reopen:
                self.failure = str(reopen).splitlines()[0]
        return cur

    def _answer_waiters(self, ok: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            try:
                waiter.callback(ok)
            except Exception:  # noqa: BLE001 - a waiter's bug must not stop the writer
                log.exception("recording: barrier callback failed")

    def _maybe_trim(self) -> None:
        """Now and then: drop DuckDB's block cache (Store.trim_cache says why), then hand
        freed heap pages back to the kernel (recordings/native_heap.py)."""
        if time.monotonic() >= self._next_trim and self.healthy:
            self._next_trim = time.monotonic() + native_heap.TRIM_EVERY_S
            try:
                self.store.trim_cache()
            except duckdb.Error as exc:
                log.warning("recording: could not trim DuckDB's cache: %s", exc)
            native_heap.trim()

    def _maybe_retain(self, cur: duckdb.DuckDBPyConnection) -> None:
        if not self.retain_days or time.time() < self._next_retention or not self.healthy:
            return
        self._next_retention = time.time() + 86_400
        retain(self.store, cur, self.retain_days)


def retain(store: Store, cur: duckdb.DuckDBPyConnection, days: int) -> tuple[int, int]:
    """Apply retention now and say what it deleted."""
    try:
        flows, events, cutoff = store.delete_older_than(cur, days)
    except duckdb.Error as exc:
        log.error("retention failed (will retry tomorrow): %s", exc)
        return 0, 0
    log.info("retention (%d days): deleted %d flows and %d events recorded before %s UTC",
             days, flows, events, cutoff.isoformat(sep=" ", timespec="seconds"))
    return flows, events
