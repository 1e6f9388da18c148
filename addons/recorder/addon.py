"""The recorder addon: every flow and every audit event, in DuckDB, without slowing flows.

Options:
    portcullis_db: the DuckDB file ('' = recording off).
    portcullis_max_body_record: bytes of each body to keep (the rest is cut, flagged).
    portcullis_retain_days: delete flows/events older than this, on start and daily (0 = keep).
    portcullis_on_record_failure: block (default) | allow: whether flows are forwarded
        while the recording cannot be written.
    portcullis_db_memory_limit, portcullis_db_threads: the DuckDB instance's memory_limit
        (default 512MB) and threads (default 1); see recordings.store.DuckDBSettings.
    portcullis_sql_timeout: seconds an analyst's query may run (default 30; see
        recordings/analyst.py for the other limits).

What it writes, and when:
    requestheaders  a ``received`` line in the journal (recordings/journal.py: a plain
                    write that survives a crash of the process) and the ``received``
                    event (queued). If either cannot be written and the policy is
                    ``block``, the agent gets a JSON 503 and nothing is forwarded.
    response/error  the ``flows`` row, once, at the first of the two; for a denial the
                    final decision is journaled before the answer goes out.
    events          every ``state.emit(...)`` of any addon (it subscribes to the event bus).
Rows reach DuckDB in batches within 200 ms (recordings/writer.py). On start, flows the
previous run left unfinished are recorded from the journal and the events
(recordings/recovery.py).

The review UI and replays get this addon from ``make_addons()`` and read its ``store``
(see :mod:`recordings.store` for that API). This addon must be the last one in the
chain, so that it records what the agent actually received.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
from mitmproxy import ctx, exceptions, http

from addons.core.events import Event
from addons.core.flowstate import FlowState, FlowStates
from addons.core.options import Option, register_options
from addons.core.replies import reply
from addons.recorder import rows
from recordings import control, maintenance, native_heap, writer
from recordings.analyst import DEFAULT_LIMITS, Limits
from recordings.feed import Feed
from recordings.journal import Journal
from recordings.lake import Lake, LakeError
from recordings.recovery import recover
from recordings.remote import RemoteStore
from recordings.schema import SCHEMA_VERSION
from recordings.store import DuckDBSettings, Store, StoreError

log = logging.getLogger("portcullis.recorder")

DEFAULT_MAX_BODY = 1024 * 1024
FAILURE_POLICIES = ("block", "allow")
#: How often the journal starts a new file (the old one goes once its flows are committed).
JOURNAL_ROTATE_S = 2.0
#: Set to "thread" to record on a thread of the gateway process instead of the recording
#: process (recordings/sink.py), e.g. to compare the two (bench/recording.py).
IN_PROCESS_ENV = "PORTCULLIS_RECORDER"
#: Distinct secrets remembered across flows (credentials are few; this only bounds memory).
MAX_KNOWN_SECRETS = 10_000


OPTIONS = (
    Option("portcullis_db", str, "", "DuckDB file that records every flow ('' = recording off).",
           flag="--db", path=True, empty_is_off=True),
    Option("portcullis_max_body_record", int, DEFAULT_MAX_BODY,
           "Bytes of each request/response body to record; longer bodies are cut and flagged.",
           flag="--max-body-record", metavar="BYTES"),
    Option("portcullis_retain_days", int, 0,
           "Delete recorded flows older than this many days, on start and daily (0 = keep all).",
           flag="--retain-days"),
    Option("portcullis_on_record_failure", str, "block",
           "When the recording cannot be written: block (JSON 503) or allow.",
           flag="--on-record-failure", choices=FAILURE_POLICIES),
    Option("portcullis_db_memory_limit", str, DuckDBSettings.memory_limit,
           "Memory the recording database may use (DuckDB memory_limit), e.g. 512MB.",
           flag="--db-memory-limit", metavar="SIZE"),
    Option("portcullis_db_threads", int, DuckDBSettings.threads,
           "DuckDB worker threads for the recording database.", flag="--db-threads"),
    Option("portcullis_sql_timeout", float, DEFAULT_LIMITS.timeout_s,
           "Seconds an analyst's query (SQL page, portcullis sql) may run.", flag="--sql-timeout"),
    Option("portcullis_lake", str, "",
           "Record into a DuckLake instead of the --db file: a directory (local catalog, no "
           "server; analysts attach it while the gateway writes) or a postgresql:// URL (one "
           "lake for every gateway; needs --lake-data). The journal and socket stay beside --db.",
           flag="--lake", metavar="DIR|URL", empty_is_off=True),
    Option("portcullis_lake_data", str, "",
           "Where a lake's data files go: a directory or s3://bucket/prefix (default for a "
           "local lake: DIR/data).", flag="--lake-data", metavar="DIR|S3URL"),
    Option("portcullis_lake_maintenance", float, maintenance.DEFAULT_EVERY_S,
           "Seconds between a lake's maintenance runs (flush inlined rows, merge small files, "
           "retention), done by one gateway at a time (0 = never).",
           flag="--lake-maintenance", metavar="SECONDS"),
)


class RecorderAddon:
    name = "portcullis_recorder"

    def __init__(self, states: FlowStates) -> None:
        self.states = states
        self.store: Store | RemoteStore | None = None
        self.writer: writer.Writer | Feed | None = None
        self.control: control.ControlServer | None = None
        self.journal: Journal | None = None
        self.journal_failure: str | None = None
        self._rotator: asyncio.Task | None = None
        self.max_body = DEFAULT_MAX_BODY
        self.block_on_failure = True
        #: flow id -> (flow, its state): the flows whose row is not written yet.
        self._inflight: dict[str, tuple[http.HTTPFlow, FlowState]] = {}
        #: writer.put_call, or an adapter for a writer without it (the in-process thread).
        self._put_call: Callable[[Callable[..., Any], tuple], None] | None = None
        self._held: set[str] = set()
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._known: tuple[str, ...] = ()
        self._known_set: frozenset[str] = frozenset()
        self._scope: str | None = None  # the store's scope (a lake's name for this gateway)
        self._spare: tuple | None = None  # a recording process started in load(), not yet used
        self._subscribed = False
        self._duckdb = DuckDBSettings()
        self._limits = DEFAULT_LIMITS

    # --- options ------------------------------------------------------------------

    def load(self, loader) -> None:
        native_heap.limit_arenas()  # before the writer, DuckDB and the UI start threads
        register_options(loader, OPTIONS)
        if os.environ.get(IN_PROCESS_ENV) != "thread" and self._spare is None:
            try:
                self._spare = Feed.spawn()  # its imports overlap with mitmproxy's start
            except OSError as exc:
                log.warning("recording: cannot start the recording process early: %s", exc)

    def configure(self, updated: set[str]) -> None:
        if "portcullis_max_body_record" in updated:
            if ctx.options.portcullis_max_body_record < 0:
                raise exceptions.OptionsError("portcullis_max_body_record must be >= 0")
            self.max_body = ctx.options.portcullis_max_body_record
        if "portcullis_retain_days" in updated:
            if ctx.options.portcullis_retain_days < 0:
                raise exceptions.OptionsError("portcullis_retain_days must be >= 0")
            if self.writer is not None and self.writer.maintenance is not None:
                self.writer.maintenance.retain_days = ctx.options.portcullis_retain_days
            elif self.writer is not None:
                self.writer.retain_days = ctx.options.portcullis_retain_days
        if "portcullis_on_record_failure" in updated:
            self.block_on_failure = ctx.options.portcullis_on_record_failure == "block"
        if updated & {"portcullis_db_memory_limit", "portcullis_db_threads", "portcullis_sql_timeout"}:
            self._duckdb, self._limits = _database_options()
            if self.store is not None and "portcullis_db" not in updated:
                self.store.configure(self._duckdb)
                self.store.limits = self._limits
                if isinstance(self.writer, Feed):
                    self.writer.configure(settings=self._duckdb, limits=self._limits)
        if "portcullis_lake_maintenance" in updated and ctx.options.portcullis_lake_maintenance < 0:
            raise exceptions.OptionsError("portcullis_lake_maintenance must be >= 0")
        if updated & {"portcullis_db", "portcullis_lake", "portcullis_lake_data"}:
            lake = _lake_option()
            self._close()
            if ctx.options.portcullis_db:
                self._open(Path(ctx.options.portcullis_db), lake)
            elif lake is not None:
                raise exceptions.OptionsError("a lake needs --db too: this gateway's journal and "
                                              "socket live beside that path")

    def _open(self, path: Path, lake: Lake | None = None) -> None:
        if os.environ.get(IN_PROCESS_ENV) == "thread":
            self._open_here(path, lake)
        else:
            self._open_sink(path, lake)
        if not self._subscribed:
            self.states.bus.subscribe(self._on_event)
            self._subscribed = True

    def _open_sink(self, path: Path, lake: Lake | None) -> None:
        """The default: the recording process (recordings/sink.py) owns the recording."""
        target = lake.describe() if lake else str(path)
        scope = gateway_scope(path) if lake else None
        days = ctx.options.portcullis_retain_days
        feed = Feed({"db": str(path), "lake": lake, "scope": scope, "settings": self._duckdb,
                     "limits": self._limits, "retain_days": days,
                     "maintenance_s": ctx.options.portcullis_lake_maintenance})
        spare, self._spare = self._spare, None
        try:
            feed.start(spare)
        except StoreError as exc:
            raise exceptions.OptionsError(f"cannot record to {target}: {exc}") from None
        ready = feed.ready
        if 0 < ready["previous_version"] < SCHEMA_VERSION:
            log.info("recording: upgraded %s from schema %d to %d", target, ready["previous_version"],
                     SCHEMA_VERSION)
        if ready["from_journal"] or ready["closed"]:
            log.warning("recording: %d flows were unfinished when the gateway last stopped "
                        "(%d known only from the journal); recorded them",
                        ready["closed"] + ready["from_journal"], ready["from_journal"])
        journal = Journal(path)
        try:
            journal.open()
        except OSError as exc:
            feed.stop()
            raise exceptions.OptionsError(f"cannot record to {target}: {exc}") from None
        self.store = RemoteStore(path, lake, scope, self._limits)
        self._scope = scope
        self.journal = journal
        self.writer = feed
        self._put_call = feed.put_call

    def _open_here(self, path: Path, lake: Lake | None = None) -> None:
        """In this process, on a writer thread (PORTCULLIS_RECORDER=thread; for comparison)."""
        target = lake.describe() if lake else str(path)
        try:
            store = Store(path, settings=self._duckdb, limits=self._limits, lake=lake,
                          scope=gateway_scope(path) if lake else None)
        except StoreError as exc:
            raise exceptions.OptionsError(f"cannot record to {target}: {exc}") from None
        if 0 < store.previous_version < SCHEMA_VERSION:
            log.info("recording: upgraded %s from schema %d to %d", path, store.previous_version,
                     SCHEMA_VERSION)
        days = ctx.options.portcullis_retain_days
        journal = Journal(path)
        cur = store.cursor()
        try:
            from_journal, closed = recover(store, cur, journal.entries())
            if from_journal or closed:
                log.warning("recording: %d flows were unfinished when the gateway last stopped "
                            "(%d known only from the journal); recorded them", closed + from_journal,
                            from_journal)
            journal.close(delete=True)  # everything in it is in the database now
            journal.open()
            if days and lake is None:  # a lake's retention is its maintenance's
                writer.retain(store, cur, days)
        except (OSError, StoreError, duckdb.Error) as exc:
            store.close()
            raise exceptions.OptionsError(f"cannot record to {target}: {exc}") from None
        finally:
            cur.close()
        self.store = store
        self._scope = store.scope
        self.journal = journal
        self.writer = writer.Writer(store, retain_days=days)
        if lake is not None:
            # Retention in a lake is part of its maintenance, which one gateway at a time runs.
            self.writer.retain_days = 0
            self.writer.maintenance = maintenance.Maintenance(
                store, ctx.options.portcullis_lake_maintenance, days)
        self.writer.start()
        self._put_call = _partial_put(self.writer)

    def running(self) -> None:
        if self.store is None:
            self._drop_spare()
            log.warning("recording is OFF (no portcullis_db): flows are not recorded")
            return
        if self._rotator is None:
            self._rotator = asyncio.get_running_loop().create_task(self._rotate_journal())
        if self.control is not None or isinstance(self.store, RemoteStore):
            return  # the recording process serves the socket
        path = control.socket_path(self.store.path)
        try:
            self.control = control.ControlServer(path, self.store, self._health).start()
        except OSError as exc:
            log.error("recording: no analyst endpoint at %s (%s): `portcullis sql` cannot reach "
                      "this gateway", path, exc)

    def done(self) -> None:
        while self._inflight:
            # Still open at shutdown (held, or waiting on an upstream): close its record.
            _, (flow, state) = self._inflight.popitem()
            decision = "expired" if flow.id in self._held else "error"
            state.reason = state.reason or "gateway_shutdown"
            self._write_flow(flow, decision, state)
        self._close()
        self._drop_spare()
        if self._subscribed:
            self.states.bus.unsubscribe(self._on_event)
            self._subscribed = False

    def _drop_spare(self) -> None:
        """The early recording process, unused (recording off): closing its end ends it."""
        if self._spare is not None:
            process, conn = self._spare
            self._spare = None
            conn.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    def _close(self) -> None:
        if self._rotator is not None:
            self._rotator.cancel()
            self._rotator = None
        if self.control is not None:
            self.control.stop()
            self.control = None
        lost = 0
        self._put_call = None
        self._scope = None
        if self.writer is not None:
            lost = self.writer.stop()
            self.writer = None
        if self.journal is not None:
            self.journal.close(delete=not lost)  # kept if rows were lost: the next start uses it
            self.journal = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def banner(self) -> list[str]:
        if self.store is None:
            return ["recording: OFF"]
        where = self.store.lake.describe() if self.store.lake else self.store.path
        beside = f"; journal and socket: {self.store.path}.*" if self.store.lake else ""
        return [f"recording: {where} (schema v{SCHEMA_VERSION}; "
                f"on failure: {'block' if self.block_on_failure else 'allow'}{beside})"]

    def _health(self) -> dict:
        return {"db": str(self.store.path) if self.store else None,
                "lake": self.store.lake.describe() if self.store and self.store.lake else None,
                "recording": self.failure or "ok" if self.writer else "off",
                "rows_written": self.writer.written if self.writer else 0,
                "writer_cpu_s": round(self.writer.cpu_seconds, 3) if self.writer else 0}

    @property
    def failure(self) -> str | None:
        """Why flows cannot be recorded right now; None when they can."""
        if self.writer is None:
            return "the recorder is not running"
        return self.journal_failure or self.writer.failure

    # --- hooks ----------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Journal the flow's arrival, then queue its ``received`` event.

        As the last addon, this runs after every other addon's ``requestheaders``: the
        request guards, identity, the policy and masking have looked at the headers (and
        may already have answered the flow) before the ``received`` line is written. It is
        on disk before the flow's body is read, before any rule needing the body, a hold
        or the upstream, so a crash from then on still leaves the flow's trace.
        """
        if self.writer is None:
            return
        state = self.states.of(flow)
        flow_id = flow.id
        self._inflight[flow_id] = (flow, state)
        request = flow.request
        path, _, query = request.path.partition("?")
        if self._known_set:
            redactor = rows.redactor_for(self._known_set)
            path = redactor.text(path)
            query = redactor.text(query) if query else None
        detail = {"method": request.method, "scheme": request.scheme, "host": request.host,
                  "port": request.port, "path": path, "query": query or None,
                  "client_addr": rows.client_address(flow.client_conn.peername)}
        if self._scope is not None:
            detail["gateway"] = self._scope  # whose flow it is, for recovery (lake)
        # A plain write, before the body, a hold or the upstream (see the docstring).
        self._journal("received", flow_id, detail)
        state.emit("received", **detail)
        if self.journal_failure is not None or self.writer.failure is not None:
            if self.block_on_failure:
                self._refuse(flow)
            else:
                log.warning("recording: %s may go unrecorded (%s)", flow_id, self.failure)

    def request(self, flow: http.HTTPFlow) -> None:
        entry = self._inflight.get(flow.id) if self.writer is not None else None
        if entry is None:
            return
        state = entry[1]
        if flow.response is None and flow.error is None and state.forwarded:
            if state.secrets:
                self._remember_secrets(state)
            state.emit("forwarded")

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    # --- internals --------------------------------------------------------------------

    def _finish(self, flow: http.HTTPFlow) -> None:
        entry = self._inflight.pop(flow.id, None) if self.writer is not None else None
        if entry is None:
            return  # not ours (CONNECT), or already written at the first of response/error
        state = entry[1]
        if self._held:
            self._held.discard(flow.id)
        decision = state.decision
        if flow.error is not None and flow.response is None and decision in (None, "allowed", "approved"):
            decision = "error"
        elif decision is None:
            decision = "error"
            state.reason = state.reason or "no decision was recorded"
        if flow.response is not None:
            state.emit("completed", status=flow.response.status_code)
        else:
            state.emit("error", error=state.error or (flow.error.msg if flow.error else None))
        if not state.forwarded:
            # A denial is on disk before the agent sees it.
            self._journal("final", flow.id, {
                "decision": decision, "rules": state.rules, "reason": state.reason,
                "identity": state.identity, "session_id": state.session_id,
                "status_code": flow.response.status_code if flow.response else None,
                "error": state.error or (flow.error.msg if flow.error else None)})
        self._write_flow(flow, decision, state)

    def _write_flow(self, flow: http.HTTPFlow, decision: str, state: FlowState) -> None:
        if self.writer is None:
            return
        if state.secrets:
            self._remember_secrets(state)
        self.writer.put_flow(rows.flow_row(flow, state, decision, self.max_body, self._known))

    def _refuse(self, flow: http.HTTPFlow) -> None:
        state = self.states.of(flow)
        log.error("recording unavailable, not forwarding %s %s: %s", flow.request.method,
                  flow.request.pretty_url, self.failure)
        state.decision = "error"
        state.reason = "recording_unavailable"
        reply(flow, 503, "recording_unavailable", "error",
              reason="the gateway cannot record this request, so it does not forward it")

    def _journal(self, kind: str, flow_id: str, fields: dict) -> None:
        if self.journal is None:
            return
        try:
            self.journal.note_fields(kind, flow_id, time.time(), fields)
        except OSError as exc:
            if self.journal_failure is None:
                log.error("recording failed: cannot write the journal: %s", exc)
            self.journal_failure = f"cannot write the journal: {exc}"
            return
        if self.journal_failure is not None:
            log.warning("recording works again: the journal is writable")
            self.journal_failure = None

    async def _rotate_journal(self) -> None:
        """Keep the journal short: a new file every few seconds; older files are deleted
        once everything queued before the switch is committed (if that fails, the next
        switch tries again)."""
        while True:
            await asyncio.sleep(JOURNAL_ROTATE_S)
            if self.journal is None or self.writer is None or self.journal.empty():
                continue
            try:
                self.journal.rotate()
            except OSError as exc:
                log.error("recording: cannot start a new journal file: %s", exc)
                continue
            # On the event loop, between hooks: every line in these files was queued before.
            older = self.journal.files()[:-1]
            self.writer.barrier(partial(_delete_when_committed, older))

    def _remember_secrets(self, state: FlowState) -> None:
        """Secrets seen in any flow are redacted everywhere (an event may quote another flow's)."""
        if all(secret in self._secrets for secret in state.secrets):
            return
        for secret in state.secrets:
            self._secrets[secret] = None
            self._secrets.move_to_end(secret)
        while len(self._secrets) > MAX_KNOWN_SECRETS:
            self._secrets.popitem(last=False)
        self._known = tuple(self._secrets)  # an immutable snapshot other threads can read
        self._known_set = frozenset(self._known)

    def _on_event(self, event: Event) -> None:
        """An audit event from any addon (any thread): queued, redacted in the recording process."""
        put = self._put_call
        if self.writer is None or put is None:
            return
        flow_id = event.flow_id
        if event.kind == "held":
            self._held.add(flow_id)
            self._journal("held", flow_id, {})  # so a crash cannot make it look unheld
        entry = self._inflight.get(flow_id)
        own = entry[1].secrets if entry is not None else None
        secrets = self._known + tuple(own) if own else self._known  # shared: pickled once per batch
        # Encoding and redaction happen in the recording process, not on the event loop.
        put(rows.event_row, (flow_id, event.kind, event.at, event.actor, event.detail, secrets))


def gateway_scope(db: Path) -> str:
    """This gateway's name in a lake: host and --db path (where its journal is)."""
    return f"{socket.gethostname()}:{db.resolve()}"


def _lake_option() -> Lake | None:
    if not ctx.options.portcullis_lake:
        return None
    try:
        return Lake.parse(ctx.options.portcullis_lake, ctx.options.portcullis_lake_data)
    except LakeError as exc:
        raise exceptions.OptionsError(str(exc)) from None


def _database_options() -> tuple[DuckDBSettings, Limits]:
    if ctx.options.portcullis_sql_timeout <= 0:
        raise exceptions.OptionsError("portcullis_sql_timeout must be > 0")
    try:
        settings = DuckDBSettings(ctx.options.portcullis_db_memory_limit, ctx.options.portcullis_db_threads)
    except ValueError as exc:
        raise exceptions.OptionsError(str(exc)) from None
    return settings, replace(DEFAULT_LIMITS, timeout_s=ctx.options.portcullis_sql_timeout)


def _partial_put(target: writer.Writer) -> Callable[[Callable[..., Any], tuple], None]:
    """put_call for the in-process writer, which takes an event as a partial."""
    def put(func: Callable[..., Any], args: tuple) -> None:
        target.put_event(partial(func, *args))
    return put


def _delete_when_committed(paths: list[Path], committed: bool) -> None:
    if committed:  # on the writer thread, right after the commit
        for path in paths:
            path.unlink(missing_ok=True)
