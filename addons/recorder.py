"""The recorder addon: every flow and every audit event, in DuckDB, without slowing flows.

Options:
    portcullis_db: the DuckDB file ('' = recording off).
    portcullis_max_body_record: bytes of each body to keep (the rest is cut, flagged).
    portcullis_retain_days: delete flows/events older than this, on start and daily (0 = keep).
    portcullis_on_record_failure: block (default) | allow: whether flows are forwarded
        while the recording cannot be written.

What it writes, and when:
    requestheaders  event ``received`` (queued; reaches disk within 200 ms).
    request         before a flow is forwarded, waits (without blocking the event loop)
                    until everything queued for it is committed: a crash after this
                    point still leaves its trace. If that fails and the policy is
                    ``block``, the agent gets a JSON 503 instead of a forward.
    response/error  the ``flows`` row, once, at the first of the two. Denials wait for
                    the commit before they are returned.
    events          every ``state.emit(...)`` of any addon (via flowstate.subscribe).
On start, flows that were received but never finished (the gateway died) get a row:
``expired`` if they were held, else ``error``, reason ``gateway_restart``.

Other addons reach the data through ``ctx.master.addons.get("portcullis_recorder").store``
(see :mod:`recordings.store` for that API). This addon must be the last one in the
chain, so that it records what the agent actually received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from addons import flowstate
from addons.flowstate import Event, has_state, state_of
from addons.replies import reply
from recordings import control, rows, writer
from recordings.schema import SCHEMA_VERSION
from recordings.store import Store, StoreError, micros

log = logging.getLogger("portcullis.recorder")

DEFAULT_MAX_BODY = 1024 * 1024
FAILURE_POLICIES = ("block", "allow")
#: How long a flow waits for its trace to be committed before that counts as a failure.
COMMIT_TIMEOUT_S = 5.0
#: Distinct secrets remembered across flows (credentials are few; this only bounds memory).
MAX_KNOWN_SECRETS = 10_000


class RecorderAddon:
    name = "portcullis_recorder"

    def __init__(self) -> None:
        self.store: Store | None = None
        self.writer: writer.Writer | None = None
        self.control: control.ControlServer | None = None
        self.max_body = DEFAULT_MAX_BODY
        self.block_on_failure = True
        self._inflight: dict[str, http.HTTPFlow] = {}
        self._held: set[str] = set()
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._known: tuple[str, ...] = ()
        self._subscribed = False

    # --- options ------------------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option("portcullis_db", str, "",
                          "DuckDB file that records every flow ('' = recording off).")
        loader.add_option("portcullis_max_body_record", int, DEFAULT_MAX_BODY,
                          "Bytes of each request/response body to record; longer bodies are cut.")
        loader.add_option("portcullis_retain_days", int, 0,
                          "Delete recorded flows older than this many days (0 = keep all).")
        loader.add_option("portcullis_on_record_failure", str, "block",
                          "What to do when the recording cannot be written: block or allow.",
                          choices=FAILURE_POLICIES)

    def configure(self, updated: set[str]) -> None:
        if "portcullis_max_body_record" in updated:
            if ctx.options.portcullis_max_body_record < 0:
                raise exceptions.OptionsError("portcullis_max_body_record must be >= 0")
            self.max_body = ctx.options.portcullis_max_body_record
        if "portcullis_retain_days" in updated:
            if ctx.options.portcullis_retain_days < 0:
                raise exceptions.OptionsError("portcullis_retain_days must be >= 0")
            if self.writer is not None:
                self.writer.retain_days = ctx.options.portcullis_retain_days
        if "portcullis_on_record_failure" in updated:
            self.block_on_failure = ctx.options.portcullis_on_record_failure == "block"
        if "portcullis_db" in updated:
            self._close()
            if ctx.options.portcullis_db:
                self._open(Path(ctx.options.portcullis_db))

    def _open(self, path: Path) -> None:
        try:
            store = Store(path)
        except StoreError as exc:
            raise exceptions.OptionsError(f"cannot record to {path}: {exc}") from None
        if 0 < store.previous_version < SCHEMA_VERSION:
            log.info("recording: upgraded %s from schema %d to %d", path, store.previous_version,
                     SCHEMA_VERSION)
        days = ctx.options.portcullis_retain_days
        cur = store.cursor()
        try:
            self._recover(store, cur)
            if days:
                writer.retain(store, cur, days)
        finally:
            cur.close()
        self.store = store
        self.writer = writer.Writer(store, retain_days=days)
        self.writer.start()
        if not self._subscribed:
            flowstate.subscribe(self._on_event)
            self._subscribed = True

    def _recover(self, store: Store, cur) -> None:
        """Give every flow the last run left unfinished a row and a closing event."""
        unfinished = store.unfinished(cur)
        if not unfinished:
            return
        seq = store.next_seq(cur)
        flows, events = [], []
        for index, found in enumerate(unfinished):
            detail = json.loads(found["detail"] or "{}")
            decision = "expired" if found["held"] else "error"
            flows.append({
                **{key: detail.get(key) for key in ("method", "scheme", "host", "port", "path",
                                                    "query", "client_addr", "identity", "session_id")},
                "id": found["flow_id"], "started_at": found["at_us"], "decision": decision,
                "reason": "gateway_restart", "rules": [],
            })
            events.append({"seq": seq + index, "flow_id": found["flow_id"], "at": micros(time.time()),
                           "actor": "gateway", "kind": decision,
                           "detail": json.dumps({"reason": "gateway_restart"})})
        store.insert(cur, flows, events)
        log.warning("recording: %d flows were unfinished when the gateway last stopped; "
                    "recorded them as expired/error (gateway_restart)", len(flows))

    def running(self) -> None:
        if self.store is None:
            log.warning("recording is OFF (no portcullis_db): flows are not recorded")
            return
        if self.control is not None:
            return
        path = control.socket_path(self.store.path)
        try:
            self.control = control.ControlServer(path, self.store, self._health).start()
        except OSError as exc:
            log.error("recording: no analyst endpoint at %s (%s): `portcullis sql` cannot reach "
                      "this gateway", path, exc)

    def done(self) -> None:
        while self._inflight:
            # Still open at shutdown (held, or waiting on an upstream): close its record.
            _, flow = self._inflight.popitem()
            state = state_of(flow)
            decision = "expired" if flow.id in self._held else "error"
            state.reason = state.reason or "gateway_shutdown"
            self._write_flow(flow, decision)
        self._close()
        if self._subscribed:
            flowstate.unsubscribe(self._on_event)
            self._subscribed = False

    def _close(self) -> None:
        if self.control is not None:
            self.control.stop()
            self.control = None
        if self.writer is not None:
            self.writer.stop()
            self.writer = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def banner(self) -> list[str]:
        if self.store is None:
            return ["recording: OFF"]
        return [f"recording: {self.store.path} (schema v{SCHEMA_VERSION}; "
                f"on failure: {'block' if self.block_on_failure else 'allow'})"]

    def _health(self) -> dict:
        return {"db": str(self.store.path) if self.store else None,
                "recording": self.writer.failure or "ok" if self.writer else "off"}

    # --- hooks ----------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.writer is None:
            return
        state = state_of(flow)
        self._inflight[flow.id] = flow
        request = flow.request
        path, _, query = request.path.partition("?")
        state.emit("received", method=request.method, scheme=request.scheme, host=request.host,
                   port=request.port, path=path, query=query or None,
                   client_addr=rows.client_address(flow.client_conn.peername))
        if not self.writer.healthy and self.block_on_failure:
            self._refuse(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if self.writer is None or flow.id not in self._inflight:
            return
        state = state_of(flow)
        if flow.response is not None or flow.error is not None or not state.forwarded:
            return  # not going upstream: the flows row is written with the answer
        self._remember_secrets(state)
        if await self._committed():
            state.emit("forwarded")
        elif self.block_on_failure:
            self._refuse(flow)
        else:
            log.warning("recording: forwarding %s although its trace is not on disk (%s)",
                        flow.id, self.writer.failure if self.writer else "stopped")

    async def response(self, flow: http.HTTPFlow) -> None:
        await self._finish(flow)

    async def error(self, flow: http.HTTPFlow) -> None:
        await self._finish(flow)

    # --- internals --------------------------------------------------------------------

    async def _finish(self, flow: http.HTTPFlow) -> None:
        if self.writer is None or self._inflight.pop(flow.id, None) is None:
            return  # not ours (CONNECT), or already written at the first of response/error
        state = state_of(flow)
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
        self._write_flow(flow, decision)
        if not state.forwarded:
            await self._committed()  # a denial is on disk before the agent sees it

    def _write_flow(self, flow: http.HTTPFlow, decision: str) -> None:
        if self.writer is None:
            return
        state = state_of(flow)
        self._remember_secrets(state)
        self.writer.put_flow(rows.flow_row(flow, state, decision, self.max_body, self._known))

    def _refuse(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        failure = self.writer.failure if self.writer else "the recorder stopped"
        log.error("recording unavailable, not forwarding %s %s: %s", flow.request.method,
                  flow.request.pretty_url, failure)
        state.decision = "error"
        state.reason = "recording_unavailable"
        reply(flow, 503, "recording_unavailable", "error",
              reason="the gateway cannot record this request, so it does not forward it")

    async def _committed(self) -> bool:
        """Wait until everything queued so far is on disk. False if that failed."""
        if self.writer is None:
            return False
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def resolve(ok: bool) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(ok))

        self.writer.barrier(resolve)
        try:
            return await asyncio.wait_for(done, COMMIT_TIMEOUT_S)
        except TimeoutError:
            return False

    def _remember_secrets(self, state: flowstate.FlowState) -> None:
        """Secrets seen in any flow are redacted everywhere (an event may quote another flow's)."""
        if all(secret in self._secrets for secret in state.secrets):
            return
        for secret in state.secrets:
            self._secrets[secret] = None
            self._secrets.move_to_end(secret)
        while len(self._secrets) > MAX_KNOWN_SECRETS:
            self._secrets.popitem(last=False)
        self._known = tuple(self._secrets)  # an immutable snapshot other threads can read

    def _on_event(self, event: Event) -> None:
        """An audit event from any addon (any thread): redact, then queue."""
        if self.writer is None:
            return
        if event.kind == "held":
            self._held.add(event.flow_id)
        flow = self._inflight.get(event.flow_id)
        secrets = self._known + tuple(state_of(flow).secrets if flow is not None and has_state(flow) else ())
        # Encoding and redaction happen on the writer thread, not on the event loop.
        self.writer.put_event(partial(rows.event_row, event.flow_id, event.kind, event.at, event.actor,
                                      event.detail, secrets))
