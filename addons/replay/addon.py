"""Replay a recorded request through the gateway, as the gateway sees it today.

A reviewer (review UI, ``POST /api/flows/<id>/replay``, ``portcullis replay``) asks for
a recorded flow to be sent again. We rebuild the request from the recording (method, URL,
headers, body), mark the new flow as a replay of the original with the reviewer as actor,
and hand it to mitmproxy's client playback (``replay.client``). The new flow then runs
through every Portcullis hook like an agent's request: the rules are evaluated again (a
replay can be blocked or held), credentials are injected from the *current*
configuration, masking applies, and the recorder stores it with ``replay_of`` set.

The rules run for the original agent's identity (and the groups configured for it now);
the replaying reviewer is the flow's ``actor``. If a replay is held, the approvals addon
keeps that actor as the hold's ``replayed_by`` and refuses to let them decide it
(``replay_self_approval``): a reviewer must not overturn another's rejection by
replaying the flow and approving the replay. Once approved, the approvals addon names
the approver as actor; we put the replaying reviewer back before the recorder writes
the row (the approver stays in the events and in the ticket).

Recordings hold no secrets: headers the recorder redacted are dropped here and the
credentials addon injects what is configured now. A request whose body was truncated by
the recording cap is refused: we would send something the agent never sent.

Client playback notes (mitmproxy 11): ``replay.client`` mutates the flow it is given and
skips live flows, so each replay is a new flow object built here; with the default
``client_replay_concurrency=1`` one held replay would stall every later one, so this
addon sets it to -1 (no limit). Our synthetic client connection is marked open: the
approvals addon treats a closed client as gone and would abandon a held replay at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection, ctx, http

from addons.core.events import Event
from addons.core.flowstate import FlowState, FlowStates
from addons.core.loopbridge import LoopBridge, LoopBusy, LoopNotRunning
from addons.core.secretforms import REDACTED

log = logging.getLogger("portcullis.replay")

#: Request headers never copied from a recording into a replay: hop-by-hop headers,
#: proxy credentials, our own control headers, and lengths that the body sets again.
DROPPED_HEADERS = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "proxy-authorization", "te", "upgrade",
})
#: Replays remembered for status queries (oldest finished ones are forgotten first).
TICKETS_MAX = 1000
HANDOVER_TIMEOUT_S = 10.0


class ReplayError(Exception):
    """A replay that cannot be started; maps onto an HTTP error for the API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Ticket:
    """One replay: what was asked, and (filled in from the event loop) what happened."""

    flow_id: str
    replay_of: str
    actor: str
    original: dict[str, Any]
    started: float = field(default_factory=time.time)
    state: str = "pending"  # pending -> held -> done
    decision: str | None = None
    status_code: int | None = None
    rules: list[str] = field(default_factory=list)
    reason: str | None = None
    error: str | None = None
    approved_by: str | None = None
    _settled: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait until the replay is held or done (or ``timeout`` passes); its summary."""
        self._settled.wait(max(0.0, timeout))
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {
            "flow_id": self.flow_id,
            "replay_of": self.replay_of,
            "actor": self.actor,
            "state": self.state,
            "decision": self.decision,
            "status_code": self.status_code,
            "rules": list(self.rules),
            "reason": self.reason,
            "error": self.error,
            "approved_by": self.approved_by,
            "original": dict(self.original),
        }

    def mark_held(self, rule: str | None, reason: str | None) -> None:
        if self.state == "pending":
            self.state = "held"
            self.rules = [rule] if rule else self.rules
            self.reason = reason
            self._settled.set()

    def finish(self, state: FlowState, flow: http.HTTPFlow) -> None:
        self.decision = state.decision
        self.rules = list(state.rules)
        self.reason = state.reason
        self.status_code = flow.response.status_code if flow.response else None
        if flow.error is not None and flow.response is None:
            self.error = flow.error.msg
            if state.decision in (None, "allowed", "approved"):
                self.decision = "error"
        self._done()

    def fail(self, message: str) -> None:
        self.error = message
        self.decision = self.decision or "error"
        self._done()

    def _done(self) -> None:
        self.state = "done"
        self._settled.set()


def rebuild_request(row: dict[str, Any]) -> http.HTTPFlow:
    """A new, unsent flow carrying the request recorded in ``row`` (a ``flows`` row)."""
    flow_id = row.get("id", "?")
    if row.get("request_truncated"):
        size = row.get("request_size")
        raise ReplayError(409, "request_truncated",
                          f"flow {flow_id} cannot be replayed: its request body was truncated by the "
                          f"recording cap ({size} bytes sent, only a part recorded), so the exact "
                          "request is not known")
    scheme = (row.get("scheme") or "").lower()
    if scheme not in ("http", "https") or not row.get("host") or not row.get("method"):
        raise ReplayError(409, "not_replayable",
                          f"flow {flow_id} has no recorded HTTP request to replay")
    if str(row["method"]).upper() == "CONNECT":
        raise ReplayError(409, "not_replayable", f"flow {flow_id} is a CONNECT tunnel, not a request")
    host = str(row["host"])
    port = int(row.get("port") or (443 if scheme == "https" else 80))
    url_host = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{url_host}:{port}{row.get('path') or '/'}"
    if row.get("query"):
        url += f"?{row['query']}"
    request = http.Request.make(str(row["method"]).upper(), url, b"", replay_headers(row.get("request_headers")))
    blob = row.get("request_body_blob")
    text = row.get("request_body")
    # The recorder stores the decoded body; the content setter re-applies Content-Encoding.
    request.content = bytes(blob) if blob is not None else (text or "").encode("utf-8", "surrogateescape")
    if not request.content and request.method in ("GET", "HEAD", "DELETE", "OPTIONS"):
        request.headers.pop("content-length", None)
    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0),
                               timestamp_start=time.time())
    # Open, so that a held replay waits for its reviewer instead of counting as abandoned.
    client.state = connection.ConnectionState.OPEN
    flow = http.HTTPFlow(client, connection.Server(address=(request.host, request.port)))
    flow.request = request
    return flow


def replay_headers(recorded: Any) -> http.Headers:
    """The recorded request headers minus redacted, hop-by-hop and control headers."""
    if isinstance(recorded, str | bytes):
        recorded = json.loads(recorded) if recorded else []
    if isinstance(recorded, dict):
        pairs = [(k, v) for k, values in recorded.items()
                 for v in (values if isinstance(values, list) else [values])]
    else:
        pairs = [tuple(item) for item in recorded or []]
    headers = http.Headers()
    for name, value in pairs:
        lowered = str(name).lower()
        if lowered in DROPPED_HEADERS or lowered.startswith("x-portcullis-"):
            continue
        if REDACTED in str(value):  # recorded in place of a secret: the credentials addon injects the current one
            continue
        headers.add(str(name), str(value))
    return headers


class ReplayAddon:
    name = "portcullis_replay"

    def __init__(self, states: FlowStates, recorder: Any, identity: Any, bridge: LoopBridge) -> None:
        """``recorder`` has the ``store`` replays are read from; ``identity`` has the
        ``authenticator`` that knows each token identity's groups; ``bridge`` hands a
        replay asked for on another thread (the review UI) to the event loop."""
        self.states = states
        self.recorder = recorder
        self.identity = identity
        self.bridge = bridge
        self.tickets: OrderedDict[str, Ticket] = OrderedDict()
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------

    def running(self) -> None:
        self.bridge.attach(asyncio.get_running_loop())
        if ctx.options.client_replay_concurrency != -1:
            # One held replay must not stall the others (see the module docstring).
            ctx.options.update(client_replay_concurrency=-1)
        self.states.bus.subscribe(self._on_event)

    def done(self) -> None:
        self.states.bus.unsubscribe(self._on_event)

    # --- starting a replay (any thread) ----------------------------------------------

    def replay(self, flow_id: str, actor: str, row: dict[str, Any] | None = None) -> Ticket:
        """Replay the recorded flow ``flow_id`` on behalf of ``actor``; safe from any thread."""
        if self.bridge.loop is None or not self.bridge.loop.is_running():
            raise ReplayError(503, "gateway_not_running", "the gateway is not running")
        if row is None:
            row = self._recorded(flow_id)
        flow = rebuild_request(row)
        ticket = Ticket(flow.id, flow_id, actor, {
            "status_code": row.get("status_code"), "decision": row.get("decision"),
            "rules": list(row.get("rules") or []),
        })
        identity = str(row.get("identity") or "anonymous")
        try:  # runs at once when called from a hook or command, else on the loop
            self.bridge.call(self._send, flow, ticket, identity, timeout=HANDOVER_TIMEOUT_S)
        except LoopNotRunning:
            raise ReplayError(503, "gateway_not_running", "the gateway is not running") from None
        except LoopBusy:
            raise ReplayError(503, "gateway_busy",
                              f"the gateway did not take the replay within {HANDOVER_TIMEOUT_S:g} s") from None
        return ticket

    def get(self, new_flow_id: str) -> Ticket | None:
        with self._lock:
            return self.tickets.get(new_flow_id)

    def _recorded(self, flow_id: str) -> dict[str, Any]:
        store = getattr(self.recorder, "store", None)
        if store is None:
            raise ReplayError(503, "recording_off", "recording is off: there is nothing to replay from")
        row = store.flow(flow_id)
        if not row:
            raise ReplayError(404, "unknown_flow", f"no recorded flow {flow_id}")
        return row

    def _send(self, flow: http.HTTPFlow, ticket: Ticket, identity: str) -> None:
        """On the event loop: mark the new flow and queue it for client playback."""
        state = self.states.of(flow)
        state.identity = identity
        state.groups = self._groups_of(identity)
        state.replay_of = ticket.replay_of
        state.actor = ticket.actor
        with self._lock:
            self.tickets[flow.id] = ticket
            self._trim()
        state.emit("replay_requested", actor=ticket.actor, replay_of=ticket.replay_of)
        self.states.detached(ticket.replay_of).emit("replayed", actor=ticket.actor, replay=flow.id)
        ctx.master.commands.call("replay.client", [flow])
        if flow.is_replay != "request":  # client playback refused it (it logs why)
            ticket.fail("mitmproxy refused to replay the flow")
        log.info("replaying flow %s as %s for %s", ticket.replay_of, flow.id, ticket.actor)

    def _trim(self) -> None:
        while len(self.tickets) > TICKETS_MAX:
            oldest = next((k for k, t in self.tickets.items() if t.state == "done"), None)
            if oldest is None:
                return
            del self.tickets[oldest]

    # --- hooks: follow our replays ---------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event.kind != "held":
            return
        ticket = self.get(event.flow_id)
        if ticket is not None:
            ticket.mark_held(event.detail.get("rule"), event.detail.get("reason"))

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        if not flow.is_replay:
            return
        ticket = self.get(flow.id)
        if ticket is None or ticket.state == "done":
            return
        state = self.states.of(flow)
        if state.actor and state.actor != ticket.actor:
            # An approver replaced the actor; the row names who replayed, the events who approved.
            ticket.approved_by = state.actor
        state.actor = ticket.actor
        ticket.finish(state, flow)

    def _groups_of(self, identity: str) -> frozenset[str]:
        """The configured groups of a token identity (JWT callers' groups are not recorded)."""
        known = getattr(getattr(self.identity, "authenticator", None), "identities", {}).get(identity)
        return known.groups if known is not None else frozenset()

