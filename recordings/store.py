"""The recording database: open/migrate it, batch-insert rows, and read it safely.

Public API for other parts of Portcullis running in the gateway process (review UI,
replay)::

    store = recorder.store                  # the RecorderAddon that make_addons() passed in
    columns, rows = store.query("SELECT id, decision FROM flows WHERE host = ?", ["x"])
    row = store.flow(flow_id)         # dict of every flows column, or None
    trail = store.events(flow_id)     # list of dicts, in order

All three are thread-safe (a cursor per call) and read-only: ``query`` accepts a single
SELECT only and runs it in a read-only transaction that is rolled back, under the
analyst limits of :mod:`recordings.analyst` (a timeout, cancellation when the client
leaves, the result's size; raises :class:`recordings.analyst.LimitHit`). In the dicts
``request_headers``/``response_headers`` and event ``detail`` are parsed JSON (headers:
lower-case name -> value, repeated headers joined with ", "); timestamps are naive UTC
datetimes. ``flow()`` adds one key that is not a column, ``target``: the path with its
query string, exactly as sent upstream. A flow can be rebuilt for replay from
``method, scheme, host, port, target, request_headers`` and the body, which is
``request_body`` (text, UTF-8) or ``request_body_blob`` (binary); when
``request_truncated`` is true the body is incomplete and must not be replayed as is.
Recorded secrets read ``[redacted]``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from recordings import lake as lakes
from recordings import schema, sqlguard
from recordings.analyst import DEFAULT_LIMITS, LimitHit, Limits, Watchdog, fetch_bounded
from recordings.lake import Lake

#: Column -> DuckDB type of the values the writer passes (timestamps as epoch microseconds).
FLOW_COLUMNS: dict[str, str] = {
    "id": "VARCHAR", "started_at": "TIMESTAMP", "ended_at": "TIMESTAMP", "duration_ms": "DOUBLE",
    "identity": "VARCHAR", "actor": "VARCHAR", "client_addr": "VARCHAR", "session_id": "VARCHAR",
    "method": "VARCHAR", "scheme": "VARCHAR", "host": "VARCHAR", "port": "INTEGER",
    "path": "VARCHAR", "query": "VARCHAR", "request_headers": "JSON", "request_body": "VARCHAR",
    "request_body_blob": "BLOB", "request_size": "BIGINT", "request_truncated": "BOOLEAN",
    "status_code": "INTEGER", "response_headers": "JSON", "response_body": "VARCHAR",
    "response_body_blob": "BLOB", "response_size": "BIGINT", "response_truncated": "BOOLEAN",
    "decision": "VARCHAR", "rules": "VARCHAR[]", "reason": "VARCHAR", "error": "VARCHAR",
    "replay_of": "VARCHAR", "masked": "INTEGER",
}
EVENT_COLUMNS: dict[str, str] = {
    "seq": "BIGINT", "flow_id": "VARCHAR", "at": "TIMESTAMP", "actor": "VARCHAR",
    "kind": "VARCHAR", "detail": "JSON", "gateway": "VARCHAR",
}
JSON_COLUMNS = ("request_headers", "response_headers", "detail")


class StoreError(Exception):
    """The recording database cannot be opened or written; the message says why."""


_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class DuckDBSettings:
    """The DuckDB instance's own bounds, set deliberately rather than left at DuckDB's defaults.

    DuckDB's default ``memory_limit`` is 80% of the machine's RAM and ``threads`` its core
    count: an analyst's query could take the gateway's whole machine, and the CPU the
    proxy's event loop needs. ``memory_limit`` bounds DuckDB's buffer manager (query
    state, cached blocks); operators that can spill go to ``<db>.tmp``. One thread is
    enough for the recorder's batched inserts (about 2% of a core at 400 flows/s); each
    query still runs on the thread that asked for it, so the writer and an analyst run
    side by side. Overridable: ``--db-memory-limit`` / ``--db-threads``
    (options ``portcullis_db_memory_limit`` / ``portcullis_db_threads``).
    """

    memory_limit: str = "512MB"
    threads: int = 1
    #: What the block cache is trimmed to every minute while no analyst reads (see trim_cache).
    cache_target: str = "4MB"

    def __post_init__(self) -> None:
        if not _MEMORY.match(self.memory_limit) or not _MEMORY.match(self.cache_target):
            raise ValueError(f"memory limit {self.memory_limit!r}: expected a size like 512MB or 2GB")
        if not 1 <= self.threads <= 64:
            raise ValueError(f"threads {self.threads}: expected 1..64")

    def config(self) -> dict[str, str]:
        return {"memory_limit": self.memory_limit.replace(" ", ""), "threads": str(self.threads)}


#: Recordings hold every body: only the gateway's user may read them (files 0600, dirs 0700).
PRIVATE_UMASK = 0o077
_umask_lock = threading.Lock()
_umask_users: list[int] = []  # previous umask, while any read-write store is open


def micros(epoch_seconds: float | None) -> int | None:
    return None if epoch_seconds is None else int(epoch_seconds * 1_000_000)


def _insert_sql(table: str, columns: dict[str, str]) -> str:
    """One INSERT per batch: the whole batch arrives as one JSON text and is unnested.

    Row-at-a-time inserts cost a statement each (~700 rows/s). DuckDB 1.5 binds a Python
    list parameter element by element (300 values: 30 ms a column, 3,000: 1 s), so the
    batch travels as one string that DuckDB's JSON reader turns into rows in C++
    (3,000 rows of every flows column: ~50 ms including ``json.dumps``). Blobs travel
    base64-encoded, timestamps as epoch microseconds.
    """
    spec = json.dumps([{name: _JSON_TYPES.get(kind, kind) for name, kind in columns.items()}])
    values = []
    for name, kind in columns.items():
        ref = f'r."{name}"'
        if kind == "TIMESTAMP":
            values.append(f"make_timestamp({ref})")
        elif kind == "JSON":
            values.append(f"{ref}::JSON")
        elif kind == "BLOB":
            values.append(f"from_base64({ref})")
        else:
            values.append(ref)
    names = ", ".join(f'"{name}"' for name in columns)
    return (f"INSERT INTO {table} ({names}) SELECT {', '.join(values)} "
            f"FROM (SELECT unnest(from_json($1, '{spec}')) AS r)")


#: How each column travels in the batch's JSON (see _insert_sql).
_JSON_TYPES = {"TIMESTAMP": "BIGINT", "JSON": "VARCHAR", "BLOB": "VARCHAR", "VARCHAR[]": ["VARCHAR"]}


_INSERT_FLOWS = _insert_sql("flows", FLOW_COLUMNS)
_INSERT_EVENTS = _insert_sql("events", EVENT_COLUMNS)


def _batch(rows: Sequence[dict[str, Any]], columns: dict[str, str],
           defaults: dict[str, Any] | None = None) -> str:
    """The rows as the JSON text _insert_sql reads (only known columns; blobs base64;
    ``defaults`` for columns a row leaves out or None)."""
    blobs = [name for name, kind in columns.items() if kind == "BLOB"]
    out = []
    for row in rows:
        item = {name: row.get(name) for name in columns}
        for name, value in (defaults or {}).items():
            if item[name] is None:
                item[name] = value
        for name in blobs:
            if item[name] is not None:
                item[name] = base64.b64encode(bytes(item[name])).decode()
        out.append(item)
    text = json.dumps(out, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate would fail the batch forever: replace it
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


class Store:
    """One DuckDB recording file. The gateway process holds it read-write; others read-only."""

    def __init__(self, path: str | Path, read_only: bool = False,
                 settings: DuckDBSettings | None = None, limits: Limits = DEFAULT_LIMITS,
                 lake: Lake | None = None, scope: str | None = None) -> None:
        self.path = Path(path)
        self.read_only = read_only
        #: With a lake, the tables are there (recordings/lake.py) and ``path`` only names
        #: this gateway's own files beside it: the journal, the socket, the staging dir.
        self.lake = lake
        #: The gateway whose unfinished flows recovery may close (a lake has many writers).
        self.scope = scope
        #: This writer's name in every event row it writes (see "Event identity" at next_seq).
        self.gateway = scope if scope is not None else gateway_name(self.path)
        self.settings = settings or DuckDBSettings()
        self.limits = limits
        self._lock = threading.Lock()
        self._watchdogs: set[Watchdog] = set()
        self._readers = 0  # analyst queries and exports running now (trim_cache waits for 0)
        self.previous_version = 0
        self._private = False
        self._passfile: lakes.PassFile | None = None
        if not read_only:
            _private_files(True)
            self._private = True
        try:
            self._con = self._connect()
        except BaseException:
            if self._passfile is not None:
                self._passfile.close()
            self._release_umask()
            raise

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self.lake is not None:
            return self._connect_lake(self.lake)
        if self.read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no such recording")
        if not self.read_only:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _restrict(self.path, self.wal, self.temp_directory, self.staging)
            except OSError as exc:  # e.g. a parent is a file, or a read-only file system
                raise StoreError(f"cannot create the directory for {self.path}: {exc}") from None
        try:
            con = duckdb.connect(str(self.path), read_only=self.read_only,
                                 config=self.settings.config())
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreError(
                    f"{self.path} is in use by another process (a running gateway?): {exc}"
                ) from None
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        try:
            if self.read_only:
                found = schema.current_version(con)
                if found > schema.SCHEMA_VERSION or found == 0:
                    raise schema.SchemaError(
                        f"{self.path} has recording schema version {found}; "
                        f"this Portcullis reads version {schema.SCHEMA_VERSION}"
                    )
            else:
                self.previous_version = schema.migrate(con, str(self.path))
                _confine(con, self.staging, self.path)
        except (schema.SchemaError, duckdb.Error, OSError) as exc:
            con.close()
            raise StoreError(str(exc)) from None
        return con

    def _connect_lake(self, lake: Lake) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB instance with the lake attached (and used) as ``lake``.

        A writer attaches, creates and migrates under the lake's setup lock
        (``lakes.setup_lock``): gateways starting together on an empty catalog would
        otherwise create it twice, and one of them fail.
        """
        try:
            ext = lakes.extension_directory(_extension_home(self.path, self.read_only), lake.extensions)
            if self.read_only:
                return self._attach_lake(lake, ext)
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with lakes.setup_lock(lake):
                lakes.prepare(lake)
                return self._attach_lake(lake, ext)
        except (OSError, lakes.LakeError) as exc:
            raise StoreError(f"cannot open the {lake.describe()}: {exc}") from None

    def _attach_lake(self, lake: Lake, ext: Path) -> duckdb.DuckDBPyConnection:
        config = {**self.settings.config(), "extension_directory": str(ext),
                  "autoinstall_known_extensions": "false", "temp_directory": str(self.temp_directory)}
        con = duckdb.connect(":memory:", config=config)
        try:
            lakes.attach(con, lake, self.read_only, lakes.without_password(lake, self.passfile))
            if self.read_only:
                found = schema.current_version(con)
                if found > schema.SCHEMA_VERSION or found == 0:
                    raise schema.SchemaError(f"the {lake.describe()} has recording schema version "
                                             f"{found}; this Portcullis reads version {schema.SCHEMA_VERSION}")
            else:
                self.previous_version = _retrying(lambda: schema.migrate(con, lake.describe()))
                _confine(con, self.staging, self.path, lake.local_directories())
        except (schema.SchemaError, lakes.LakeError, duckdb.Error, OSError) as exc:
            con.close()
            raise StoreError(str(exc)) from None
        return con

    # --- connections -----------------------------------------------------------

    @property
    def passfile(self) -> lakes.PassFile:
        """The lake catalog's password, out of the URL DuckDB shows (lakes.without_password):
        unnamed where the OS allows, else in a private directory of its own; never in one
        the confined DuckDB may read."""
        if self._passfile is None:
            self._passfile = lakes.PassFile(
                Path(tempfile.gettempdir()) / f"portcullis-{os.getuid()}-{os.getpid()}-{id(self):x}")
        return self._passfile

    @property
    def wal(self) -> Path:
        return self.path.parent / f"{self.path.name}.wal"

    @property
    def temp_directory(self) -> Path:
        """Where DuckDB spills (its default for a file database; allowed by _confine)."""
        return self.path.parent / f"{self.path.name}.tmp"

    def configure(self, settings: DuckDBSettings) -> None:
        """Apply new instance settings to the open database (values validated by the type)."""
        with self._lock:
            for name, value in settings.config().items():
                self._con.execute(f"SET {name} = '{_sql_string(value)}'")
            self.settings = settings

    def trim_cache(self) -> bool:
        """Drop DuckDB's cached table blocks, unless someone is reading; True if trimmed.

        DuckDB's buffer manager keeps every block it wrote or read until ``memory_limit``
        forces it out, so under steady recording the gateway's memory grew with the file
        (the 30-minute soak: +218 MB, about the size of the database). Lowering the limit
        for a moment (to ``cache_target``: DuckDB evicts down to the new limit, no further)
        evicts the cached blocks (they are on disk; committed rows not yet checkpointed
        move to ``<db>.tmp``, 0600) and gives analysts the whole limit back at once. Done only while no analyst query or export runs (the
        lock keeps one from starting meanwhile), so none can run out of memory because
        of it; the writer calls it between commits.
        """
        with self._lock:
            if self._readers or self.read_only:
                return False
            try:
                self._con.execute(f"SET memory_limit = '{_sql_string(self.settings.cache_target)}'")
            except duckdb.Error:
                return False  # more than the target is pinned right now: try again later
            finally:
                self._con.execute(f"SET memory_limit = '{_sql_string(self.settings.config()['memory_limit'])}'")
            return True

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            self._readers += 1
        try:
            yield
        finally:
            with self._lock:
                self._readers -= 1

    def interrupt_analysts(self, reason: LimitHit) -> int:
        """Stop every running analyst query (the recorder needs the memory); returns how many."""
        with self._lock:
            running = list(self._watchdogs)
        for watchdog in running:
            watchdog.interrupt(reason)
        return len(running)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor for the calling thread (a connection must not be shared by threads)."""
        with self._lock:
            cur = self._con.cursor()
        if self.lake is not None:
            cur.execute(f"USE {lakes.ALIAS}")  # USE is per connection; a cursor is a new one
        return cur

    def reopen(self) -> None:
        """Replace the connection, e.g. after a write failure invalidated the database."""
        with self._lock:
            try:
                self._con.close()
            except duckdb.Error:
                pass
            self._con = self._connect()

    def close(self, checkpoint: bool = True) -> None:
        with self._lock:
            # A lake's CHECKPOINT is its maintenance (recordings/maintenance.py runs it).
            if checkpoint and not self.read_only and self.lake is None:
                try:
                    self._con.execute("CHECKPOINT")
                except duckdb.Error:
                    pass  # the WAL is replayed on the next open
            self._con.close()
        if self._passfile is not None:
            self._passfile.close()
        self._release_umask()

    def _release_umask(self) -> None:
        if self._private:
            self._private = False
            _private_files(False)

    # --- reading ---------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None,
              gone: Callable[[], bool] | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only SELECT; returns (column names, rows).

        Bounded by ``self.limits`` (raises LimitHit); ``gone()`` returning True (the
        client left) stops the query.
        """
        statement = sqlguard.read_only_statement(sql)
        with self._read_only_cursor() as cur, self._watched(cur, gone):
            cur.execute(statement, params)
            columns = [d[0] for d in cur.description or []]
            return columns, fetch_bounded(cur, self.limits)

    def write_parquet(self, sql: str, output: str | Path,
                      gone: Callable[[], bool] | None = None) -> int:
        """Write the result of one read-only SELECT to a Parquet file; returns the row count."""
        statement = sqlguard.read_only_statement(sql)
        with self._read_only_cursor() as cur, self._staged(output) as staged, self._watched(cur, gone):
            # A relation, not COPY (<sql>) TO: the analyst's text is never spliced into SQL.
            cur.sql(statement).write_parquet(str(staged))
            row = cur.execute("SELECT count(*) FROM read_parquet(?)", [str(staged)]).fetchone()
            return int(row[0]) if row else 0

    @contextmanager
    def _watched(self, cur: duckdb.DuckDBPyConnection,
                 gone: Callable[[], bool] | None) -> Iterator[Watchdog]:
        watchdog = Watchdog(cur, self.limits, gone)
        with self._lock:
            self._watchdogs.add(watchdog)
            self._readers += 1
        try:
            with watchdog:
                yield watchdog
        finally:
            with self._lock:
                self._watchdogs.discard(watchdog)
                self._readers -= 1

    def copy_to(self, select_sql: str, output: str | Path, fmt: str) -> int:
        """COPY a SELECT that Portcullis built itself (export) to a parquet or JSON-lines file."""
        with self._reading(), self._read_only_cursor() as cur, self._staged(output) as staged:
            row = cur.execute(
                f"COPY ({select_sql}) TO '{_sql_string(staged)}' (FORMAT {'parquet' if fmt == 'parquet' else 'json'})"
            ).fetchone()
            return int(row[0]) if row else 0

    @property
    def staging(self) -> Path:
        """The only directory DuckDB may touch besides the database (see _confine)."""
        return self.path.parent / f"{self.path.name}.out"

    @contextmanager
    def _staged(self, output: str | Path) -> Iterator[Path]:
        """DuckDB writes into the staging directory; Python moves the file to ``output``."""
        if self.read_only:  # a read-only store (the CLI, offline) is not confined
            yield Path(output)
            os.chmod(output, 0o600)
            return
        staged = self.staging / f"{uuid.uuid4().hex}{Path(output).suffix}"
        try:
            yield staged
            os.chmod(staged, 0o600)  # move keeps the mode: an export holds bodies too
            shutil.move(str(staged), str(output))
        finally:
            staged.unlink(missing_ok=True)

    def _read_only_cursor(self) -> _ReadOnly:
        return _ReadOnly(self.cursor())

    def flow(self, flow_id: str) -> dict[str, Any] | None:
        columns, rows = self.query("SELECT * FROM flows WHERE id = ? LIMIT 1", [flow_id])
        if not rows:
            return None
        row = _decode(dict(zip(columns, rows[0], strict=True)))
        row["target"] = row["path"] + (f"?{row['query']}" if row.get("query") else "") \
            if row.get("path") is not None else None
        return row

    def events(self, flow_id: str) -> list[dict[str, Any]]:
        columns, rows = self.query(
            f"SELECT * FROM events WHERE flow_id = ? ORDER BY {schema.EVENT_ORDER}", [flow_id]
        )
        return [_decode(dict(zip(columns, row, strict=True))) for row in rows]

    # --- writing (the writer thread only) -------------------------------------

    def next_seq(self, cur: duckdb.DuckDBPyConnection) -> int:
        """The next ``seq`` of this writer's events.

        Event identity: an event's key is ``(gateway, seq)``, and events are ordered by
        ``"at", gateway, seq`` (``schema.EVENT_ORDER``). ``gateway`` names the writer
        (``scope`` in a lake: host and ``--db`` path, the name recovery already goes by;
        for a file the same form); ``seq`` counts that writer's events in the order they
        reached it. One writer per name is guaranteed on a host (the recording process
        holds ``<db>.sink.lock``), so a writer alone hands out its numbers: no catalog
        round trip, no lock shared by the gateways, no wait on another gateway's commit.
        The name must differ between hosts (the host name is part of it). The
        alternatives were worse for an audit trail: ranges reserved in the catalog under
        a lock put every gateway's start behind one shared lock and still order events by
        reservation, not by time; a UUIDv7-style key would change ``seq``'s type (BIGINT,
        in every reader's and export's hands) and carries only a clock and random bits,
        while ``gateway`` says who wrote the row. A writer continues after its own highest seq
        and after every row that names no gateway (written before schema version 3), so
        a file's seq stays one increasing sequence across the upgrade.
        """
        row = cur.execute("SELECT coalesce(max(seq), 0) FROM events WHERE gateway = ? OR gateway IS NULL",
                          [self.gateway]).fetchone()
        return int(row[0]) + 1 if row else 1

    def insert(self, cur: duckdb.DuckDBPyConnection, flows: Sequence[dict[str, Any]],
               events: Sequence[dict[str, Any]]) -> None:
        """Insert a batch in one transaction: everything or nothing.

        In a lake another process may commit at the same moment (a busy SQLite catalog, a
        DuckLake conflict): such a commit is retried a few times before it counts as failed.
        """
        if self.lake is None:
            self._insert_once(cur, flows, events)
        else:
            _retrying(lambda: self._insert_once(cur, flows, events))

    def _insert_once(self, cur: duckdb.DuckDBPyConnection, flows: Sequence[dict[str, Any]],
                     events: Sequence[dict[str, Any]]) -> None:
        cur.execute("BEGIN TRANSACTION")
        try:
            if flows:
                cur.execute(_INSERT_FLOWS, [_batch(flows, FLOW_COLUMNS)])
            if events:
                cur.execute(_INSERT_EVENTS, [_batch(events, EVENT_COLUMNS, {"gateway": self.gateway})])
            cur.execute("COMMIT")
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise

    def unfinished(self, cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
        """Flows that were received but never got a flows row (the gateway died first).

        In a lake only this gateway's (``scope``: its received events say which gateway).
        """
        cur.execute(f"""
            SELECT r.flow_id, epoch_us(r.at) AS at_us, r.detail,
                   EXISTS (SELECT 1 FROM events h WHERE h.flow_id = r.flow_id AND h.kind = 'held') AS held
            FROM events r
            WHERE r.kind = 'received' AND NOT EXISTS (SELECT 1 FROM flows f WHERE f.id = r.flow_id)
              {self.scope_filter("r")}
            ORDER BY r.at
        """, self.scope_params())
        columns = [d[0] for d in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    def scope_filter(self, alias: str) -> str:
        """SQL restricting ``alias`` (a received event) to this gateway's flows, if scoped."""
        return "" if self.scope is None else f"AND json_extract_string({alias}.detail, '$.gateway') = $scope"

    def scope_params(self) -> dict[str, Any] | None:
        return None if self.scope is None else {"scope": self.scope}

    def delete_older_than(self, cur: duckdb.DuckDBPyConnection, days: int,
                          now: datetime | None = None) -> tuple[int, int, datetime]:
        """Retention: delete flows started, and events that happened, before now - days."""
        cutoff = (now or datetime.utcnow()) - timedelta(days=days)
        cur.execute("BEGIN TRANSACTION")
        try:
            events = cur.execute(
                'DELETE FROM events WHERE "at" < ? OR flow_id IN '
                "(SELECT id FROM flows WHERE started_at < ?)", [cutoff, cutoff],
            ).fetchone()
            flows = cur.execute("DELETE FROM flows WHERE started_at < ?", [cutoff]).fetchone()
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return int(flows[0] if flows else 0), int(events[0] if events else 0), cutoff


class _ReadOnly:
    """A cursor inside a read-only transaction that is always rolled back."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.cur = cur

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.cur.execute("BEGIN TRANSACTION READ ONLY")
        return self.cur

    def __exit__(self, *exc: object) -> None:
        try:
            self.cur.execute("ROLLBACK")
        finally:
            self.cur.close()


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for name in JSON_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


def _confine(con: duckdb.DuckDBPyConnection, staging: Path, db: Path,
             extra: Sequence[str] = ()) -> None:
    """No file access for SQL run on this database beyond its own files.

    Reviewers' SELECTs run here, and DuckDB's table functions read any file
    (``read_text('/etc/...')``, ``glob``, ``read_csv``, ``'file.csv'`` scans): the CA key,
    the reviewers file and the identities file would be one query away. With external
    access off, only the staging directory (exports go through it) and DuckDB's own
    temp directory are reachable, and DuckDB refuses to turn access back on while the
    database is open: read-only by construction, not by filtering function names.
    """
    staging.mkdir(mode=0o700, exist_ok=True)
    allowed = [str(staging) + "/", str(db.parent / f"{db.name}.tmp") + "/", *extra]
    con.execute("SET allowed_directories = [" + ", ".join(f"'{_sql_string(d)}'" for d in allowed) + "]")
    con.execute("SET enable_external_access = false")


#: Lake commits that meet another process's are retried this often, this far apart.
RETRIES = 8
RETRY_PAUSE_S = 0.05
_TRANSIENT = ("conflict", "database is locked", "database table is locked", "busy")


def _retrying(action: Callable[[], Any]) -> Any:
    """Run ``action``, again after a short pause when another lake writer got in the way."""
    for attempt in range(RETRIES):
        try:
            return action()
        except duckdb.Error as exc:
            text = str(exc).lower()
            if attempt == RETRIES - 1 or not any(word in text for word in _TRANSIENT):
                raise
            time.sleep(RETRY_PAUSE_S * (attempt + 1))
    return None


def gateway_name(db: Path) -> str:
    """A writer's name in its event rows: host and --db path (addons/recorder's scope)."""
    return f"{socket.gethostname()}:{db.resolve()}"


def _extension_home(db: Path, read_only: bool) -> Path:
    """Where the lake's DuckDB extensions are linked: beside the gateway's --db, or, for a
    reader (portcullis sql --lake), a directory of this user's in the temp directory."""
    home = db.parent / f"{db.name}.ext"
    if not read_only and (os.access(db.parent, os.W_OK) or home.exists()):
        return home
    return Path(tempfile.gettempdir()) / f"portcullis-ext-{os.getuid()}"


def _private_files(on: bool) -> None:
    """Files and directories this process creates while a recording is open are private.

    DuckDB creates the database, its ``.wal`` (again after every checkpoint), its spill
    directory and export files with mode 0666 minus the umask, so the umask is the only
    place to make them 0600 from the first byte. It is per process: it stays 077 while any
    read-write store is open and goes back to what it was when the last one closes.
    """
    with _umask_lock:
        if on:
            _umask_users.append(os.umask(PRIVATE_UMASK))
        elif _umask_users:
            previous = _umask_users.pop()
            if not _umask_users:
                os.umask(previous)


def _restrict(*paths: Path) -> None:
    """Existing files from before this rule (or another umask) lose group/other access."""
    for path in paths:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        wanted = 0o700 if path.is_dir() else 0o600
        if mode & 0o077:
            os.chmod(path, mode & wanted)


def _sql_string(value: str | Path) -> str:
    return str(value).replace("'", "''")
