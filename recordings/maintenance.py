"""A lake's upkeep: flush inlined rows into files, merge small files, apply retention.

Every commit of a busy gateway lands in the lake's catalog (inlined, recordings/lake.py)
or as a small Parquet file; left alone, queries slow down with the number of files and
the catalog grows. Every ``every_s`` seconds the writer tries to become the one process
that maintains the lake: for a PostgreSQL catalog a session advisory lock
(``pg_try_advisory_lock``, released when the session ends, so a killed gateway cannot
keep it), for a local lake an exclusive ``flock`` on ``DIR/maintenance.lock``. The
holder, and only it, runs, in order:

1. ``ducklake_flush_inlined_data``: inlined rows become Parquet files;
2. retention (``--retain-days``): flows and events older than the cutoff are deleted;
3. ``ducklake_merge_adjacent_files``: small files become few large ones;
4. ``ducklake_expire_snapshots`` / ``ducklake_cleanup_old_files`` for snapshots and files
   older than ``KEEP_SNAPSHOTS_S``, so a reader that started on an older snapshot (an
   analyst's query) still finds its files.

The others skip the round. Nothing here is needed for correctness, only for speed and
size, so a failed round is logged and tried again next time.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import duckdb

from recordings.lake import ALIAS, Lake

log = logging.getLogger("portcullis.recorder")

DEFAULT_EVERY_S = 300.0
#: Snapshots (and the files only they reference) are kept this long for running readers.
KEEP_SNAPSHOTS_S = 600
#: The advisory lock's key: one per lake database (the number is arbitrary but fixed).
ADVISORY_KEY = 7_318_201_118


class Maintenance:
    def __init__(self, store: Any, every_s: float = DEFAULT_EVERY_S, retain_days: int = 0) -> None:
        self.store = store
        self.every_s = every_s
        self.retain_days = retain_days
        self.runs = 0  # rounds this process did (it held the lock)
        self._next = time.monotonic() + every_s

    def due(self) -> bool:
        return bool(self.every_s) and time.monotonic() >= self._next

    def maybe_run(self, cur: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
        if not self.due():
            return None
        self._next = time.monotonic() + self.every_s
        try:
            return self.run(cur)
        except Exception as exc:  # noqa: BLE001 - upkeep must never stop recording
            log.warning("lake maintenance failed (will try again): %s", str(exc).splitlines()[0])
            return None

    def run(self, cur: duckdb.DuckDBPyConnection, keep_s: float = KEEP_SNAPSHOTS_S) -> dict[str, Any] | None:
        """One round if this process gets the lock; what it did, or None if another has it."""
        lake: Lake = self.store.lake
        with exclusive(lake) as held:
            if not held:
                return None
            began = time.monotonic()
            done: dict[str, Any] = {}
            cur.execute(f"CALL ducklake_flush_inlined_data('{ALIAS}')")
            if self.retain_days:
                flows, events, _ = self.store.delete_older_than(cur, self.retain_days)
                done.update(deleted_flows=flows, deleted_events=events)
            cur.execute(f"CALL ducklake_merge_adjacent_files('{ALIAS}')")
            keep = f"now() - INTERVAL '{int(keep_s)} seconds'"
            cur.execute(f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => {keep})")
            cur.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', older_than => {keep})")
            self.runs += 1
            done["seconds"] = round(time.monotonic() - began, 3)
            log.info("lake maintenance: %s", done)
            return done


@contextlib.contextmanager
def exclusive(lake: Lake) -> Iterator[bool]:
    """Yields True while this process is the lake's one maintainer, else False at once."""
    if lake.shared:
        import psycopg

        with psycopg.connect(lake.catalog, autocommit=True, connect_timeout=5) as session:
            row = session.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_KEY]).fetchone()
            held = bool(row and row[0])
            try:
                yield held
            finally:
                if held:
                    session.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_KEY])
        return
    assert lake.catalog_file is not None
    fd = os.open(lake.catalog_file.parent / "maintenance.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
