"""Hold risky requests until a human reviewer approves or rejects them.

The policy addon leaves ``hold`` verdicts (``state.verdict``) to this addon. Two ways for
an agent to wait:

* **wait** (default): the agent's HTTP call stays open. Our ``request`` hook awaits the
  decision under ``asyncio.wait_for(timeout)``; mitmproxy keeps the connection open
  meanwhile and serves other agents normally.
* **async** (``X-Portcullis-Wait: async``): the agent gets ``202 {"status": "pending",
  "flow_id", "poll"}`` at once and later re-sends the identical request with
  ``X-Portcullis-Approval: <flow_id>`` to collect the outcome.

This module only adapts flows. The state machine (votes, N approvals, escalation,
grants, expiry, single use, who may decide) is :class:`~addons.holds.book.HoldBook`;
what an approval is bound to and what the reviewer is shown is addons.holds.binding;
the review UI decides through :class:`~addons.holds.desk.HoldDesk` (``self.desk``).

Limits, so that one agent cannot flood reviewers or memory (top-level rule settings,
see addons.holds.spec): at most ``max_pending_holds_per_identity`` pending holds per
identity (429 ``too_many_pending_holds``), and a holdable body of at most
``max_held_body`` bytes (413 ``held_body_too_large``). A hold keeps the shown prefix of
the body, its hash and a reference to the flow's own bytes (for the download), which it
drops once decided. Hold rules also refuse a JSON body with a duplicated key (400
``duplicate_json_key``): the reviewer is shown one copy, the upstream may read the other.

Reviewers act from another thread (the review UI); every state change happens on the
proxy's event loop (the desk crosses over through addons.core.loopbridge), so no locks
are needed here. Timers (escalation, async expiry) run on the loop and call the book.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mitmproxy import connection, ctx, http
from mitmproxy.connection import ConnectionState

from addons.core.events import Event, EventKind
from addons.core.flowstate import FlowState, FlowStates
from addons.core.loopbridge import LoopBridge
from addons.core.replies import DECISION_HEADER, FLOW_ID_HEADER, JSONRPC_CODES, refuse, reply
from addons.core.secretforms import REDACTED
from addons.holds.binding import (
    DecodedBody,
    RequestPrint,
    VerdictPrint,
    decode_body,
    duplicated_key,
    sha256,
    shown_body,
)
from addons.holds.book import DECISIONS, Actor, DecisionError, HoldBook, HoldRecord
from addons.holds.desk import HoldDesk
from addons.holds.spec import (
    DEFAULT_MAX_HELD_BODY,
    DEFAULT_MAX_PENDING_HOLDS_PER_IDENTITY,
    HoldSpec,
    format_duration,
    hold_spec,
)
from addons.holds.store import HoldStore
from addons.masking import streamhooks
from addons.mcp import jsonrpc
from addons.mcp.heldstream import HeldStream, HeldStreams
from addons.querylang.rules import reviewer_view

__all__ = ["Actor", "ApprovalsAddon", "DecisionError", "refuse"]

log = logging.getLogger("portcullis.approvals")

WAIT_HEADER = "x-portcullis-wait"
APPROVAL_HEADER = "x-portcullis-approval"
JUSTIFICATION_HEADER = "x-portcullis-justification"
JUSTIFICATION_MAX = 1000
#: Headers never shown to reviewers in clear.
SECRET_HEADER_WORDS = ("authorization", "cookie", "token", "secret", "password", "api-key", "apikey")
BODY_SHOWN_MAX = 64 * 1024
DISCONNECT_POLL_S = 0.2
#: How long an approved MCP call whose client gave up may be collected by one identical
#: re-sent call (same identity, tool, canonical arguments).
RESEND_WINDOW_S = 600.0
#: How long the approved call of a held SSE stream may take upstream before the stream
#: ends with an error.
CONTINUATION_TIMEOUT_S = 300.0
_FINAL = frozenset(EventKind(d) for d in DECISIONS)



class PolicySource(Protocol):
    """The policy addon, as seen from here: the policy in force now (None before loading)."""

    policy: Any


def is_secret_header(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_HEADER_WORDS)


def client_gone(flow: http.HTTPFlow) -> bool:
    return not (flow.client_conn.state & ConnectionState.CAN_READ)


class ApprovalsAddon:
    name = "portcullis_approvals"

    def __init__(self, states: FlowStates, policy: PolicySource, store: HoldStore | None = None,
                 bridge: LoopBridge | None = None, mcp: Any = None) -> None:
        """``store``: where holds live (memory by default); ``bridge``: the loop bridge to
        share with other addons (one is made otherwise); attached in ``running``;
        ``mcp``: the MCP addon (addons.mcp.addon), which says what an MCP call is."""
        self.states = states
        self.mcp = mcp
        #: Read at each hold: the rules in force when the request arrived decide it.
        self.policy_source = policy
        self.book = HoldBook(store, states.bus)
        self.bridge = bridge if bridge is not None else LoopBridge()
        self.desk = HoldDesk(self.book, self.bridge, self.secrets_of)
        #: Held flows whose agent is waiting on the open connection (wait mode).
        self.waiting: dict[str, http.HTTPFlow] = {}
        self._decided: dict[str, asyncio.Event] = {}
        self._timers: dict[str, list[asyncio.TimerHandle]] = {}
        #: The flow state of each pending hold (its injected secrets, for the desk).
        self._held: dict[str, FlowState] = {}
        self._watcher: asyncio.Task | None = None
        #: Held MCP calls answered as an SSE stream the gateway keeps alive (addons.mcp.heldstream).
        self.held_streams = HeldStreams()
        #: hold id -> what an identical re-sent MCP call is (tool, canonical arguments).
        self._mcp_prints: dict[str, RequestPrint] = {}
        #: ids of flows whose response is a held stream (streamed, URL restored).
        self._streamed: dict[str, http.Request] = {}
        #: id of the flow that carries an approved held-stream call upstream -> its relay.
        self._continuations: dict[str, Continuation] = {}
        self._tasks: set[asyncio.Task] = set()
        #: Placed last in the addon chain: sees continuation responses after every addon.
        self.relays = ContinuationRelays(self)
        # Lives as long as the bus: the book's own decisions must wake the waiters.
        states.bus.subscribe(self._on_event)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.bridge.loop

    def running(self) -> None:
        self._attach()
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_clients())
            self._spawn(self.held_streams.start())

    def _attach(self) -> None:
        if self.bridge.loop is None:
            self.bridge.attach(asyncio.get_running_loop())

    def done(self) -> None:
        self.book.expire_all("gateway_shutdown")
        self.held_streams.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _on_event(self, event: Event) -> None:
        """On a hold's decision: cancel its timers, wake its waiter."""
        if event.kind in _FINAL:
            for timer in self._timers.pop(event.flow_id, ()):
                timer.cancel()
            self._held.pop(event.flow_id, None)
            if event.kind != EventKind("approved"):  # an approval may still admit a re-send
                self._mcp_prints.pop(event.flow_id, None)
            decided = self._decided.get(event.flow_id)
            if decided is not None:
                decided.set()

    def secrets_of(self, hold_id: str) -> set[str]:
        state = self._held.get(hold_id)
        return set(state.secrets) if state is not None else set()

    # --- the data path -------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        state = self.states.of(flow)
        verdict = state.verdict
        if verdict is None or verdict.action != "hold":
            return
        self._attach()
        continuation = self._continuations.get(flow.id)
        if continuation is not None:  # the approved call of a held stream, on its way upstream
            state.decision = "approved"
            state.actor = continuation.hold.decided_by
            state.reason = continuation.hold.spec.reason
            return
        spec = hold_spec(verdict.rule, self.policy_source.policy, verdict.reason)
        binding, verdict_print = RequestPrint.of(flow.request), VerdictPrint.of(verdict, spec)
        if APPROVAL_HEADER in state.control:
            self._collect(flow, state, state.control[APPROVAL_HEADER].strip(), binding, verdict_print)
            return
        grant = self.book.use_grant(flow.id, state.identity, binding, verdict_print)
        mcp_print = self._mcp_print(flow)
        if grant is None and mcp_print is not None:  # an approved MCP call, re-sent
            grant = self.book.use_grant(flow.id, state.identity, mcp_print, verdict_print)
        if grant is not None:
            state.decision = "approved"
            state.actor = grant.created_by
            return
        pending = self._pending_resend(state.identity, mcp_print, verdict_print) if mcp_print else None
        if pending is not None:  # a retry while the call its client gave up on still waits
            if self._streamable(flow):  # kept alive like the first call, not in this hook
                self._join_on_stream(flow, state, pending, mcp_print, verdict_print)
            else:
                await self._join(flow, state, pending, mcp_print, verdict_print)
            return
        body = self._holdable(flow, state)
        if body is None:
            return
        hold = self._hold(flow, state, verdict, spec, binding, verdict_print, body)
        if mcp_print is not None:
            self._mcp_prints[hold.id] = mcp_print
        if hold.mode == "async":
            self._later(hold.id, hold.deadline - time.time(), self.book.expire)
            self._answer_pending(flow, state, hold)
            return
        if mcp_print is not None and self._streamable(flow):
            self._hold_on_stream(flow, state, hold)
            return
        await self._wait(flow, state, hold)

    def error(self, flow: http.HTTPFlow) -> None:
        """A flow that died while held (client gone, killed) is abandoned, never forwarded."""
        self._streamed.pop(flow.id, None)
        if flow.id in self._mcp_prints:
            return  # an MCP call stays for its reviewer; approved, its re-send is admitted
        if self.book.abandon(flow.id):
            self.states.of(flow).decision = "abandoned"

    def _setting(self, key: str, default: Any) -> Any:
        policy = self.policy_source.policy
        return policy.settings.get(key, default) if policy is not None else default

    def _holdable(self, flow: http.HTTPFlow, state: FlowState) -> DecodedBody | None:
        """Refuse (and say so) a request that must not become a hold, returning None;
        else its body, decoded (once) the way the policy reads it."""
        size = len(flow.request.raw_content or b"")
        limit = self._setting("max_held_body", DEFAULT_MAX_HELD_BODY)
        if size > limit:
            refuse(flow, state, 413, "held_body_too_large",
                   f"this request needs approval, and a held body may be at most {limit:,} bytes "
                   f"(this one is {size:,}); split it or ask for the limit (max_held_body) to be raised",
                   size=size, limit=limit)
            return None
        body = decode_body(flow.request)
        key = duplicated_key(body)
        if key is not None:
            refuse(flow, state, 400, "duplicate_json_key",
                   f"the JSON body has the key {key!r} more than once in one object; a reviewer "
                   "would see one copy and the upstream might read the other", key=key[:200])
            return None
        cap = self._setting("max_pending_holds_per_identity", DEFAULT_MAX_PENDING_HOLDS_PER_IDENTITY)
        pending = self.book.pending_at_cap(state.identity, cap)
        if pending is not None:
            refuse(flow, state, 429, "too_many_pending_holds",
                   f"{state.identity} already has {pending} requests waiting for review (the limit is "
                   f"{cap}); wait for decisions before sending more", pending=pending, limit=cap,
                   headers={"Retry-After": "30"})
            return None
        return body

    def _hold(self, flow: http.HTTPFlow, state: FlowState, verdict: Any, spec: HoldSpec,
              binding: RequestPrint, verdict_print: VerdictPrint, body: DecodedBody) -> HoldRecord:
        justification = state.control.get(JUSTIFICATION_HEADER)
        if justification is not None:
            justification = justification.strip()[:JUSTIFICATION_MAX]
            state.justification = justification
        request = flow.request
        raw = request.raw_content or b""
        shown = shown_body(body, BODY_SHOWN_MAX)
        text = shown.text
        for secret in state.secrets:
            text = text.replace(secret, REDACTED)
        now = time.time()
        hold = HoldRecord(
            id=flow.id,
            identity=state.identity,
            groups=state.groups,
            session_id=state.session_id,
            rules=tuple(state.rules),
            spec=spec,
            method=request.method.upper(),
            url=request.pretty_url,
            headers=[(k, REDACTED if is_secret_header(k) or k.lower() in state.injected_headers else v)
                     for k, v in request.headers.items(multi=True)],
            body=text,
            body_truncated=shown.truncated,
            body_warning=shown.warning,
            body_size=len(raw),
            binding=binding,
            verdict=verdict_print,
            body_sha256=sha256(raw),
            justification=justification,
            mode="async" if state.control.get(WAIT_HEADER, "").strip().lower() == "async" else "wait",
            matched=[{"name": r.name, "action": r.action, "reason": r.reason} for r in verdict.matched],
            created=now,
            deadline=now + spec.timeout,
            raw=raw,
            replay_of=state.replay_of,
            replayed_by=state.actor if state.replay_of else None,
            queries=reviewer_view(state.classifications, state.secrets),
            mcp=self.mcp.describe(flow, state) if self.mcp is not None else None,
        )
        self._held[hold.id] = state
        self.book.hold(hold)
        if hold.escalate_after is not None:
            self._later(hold.id, hold.escalate_after, self.book.escalate)
        log.info("held %s %s for %s (rule %s, %s)", hold.method, hold.url, hold.identity,
                 spec.rule, format_duration(spec.timeout))
        return hold

    def _later(self, hold_id: str, delay: float, action: Callable[[str], Any]) -> None:
        """Call ``action(hold_id)`` on the loop after ``delay`` s (cancelled once decided)."""
        loop = asyncio.get_running_loop()
        self._timers.setdefault(hold_id, []).append(loop.call_later(max(0.0, delay), action, hold_id))

    async def _wait(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord) -> None:
        decided = self._decided[hold.id] = asyncio.Event()
        self.waiting[hold.id] = flow
        try:
            await asyncio.wait_for(decided.wait(), timeout=max(0.0, hold.deadline - time.time()))
        except TimeoutError:
            self.book.expire(hold.id)
        finally:
            self.waiting.pop(hold.id, None)
            self._decided.pop(hold.id, None)
        hold = self.book.get(hold.id)
        if hold.decision == "abandoned" or (hold.decision == "approved" and client_gone(flow)):
            # Never forward for a client that has gone; the kill ends the flow in `error`.
            if hold.decision == "approved":
                self._admit_resend(hold)
                state.emit("abandoned", actor="gateway", reason="client disconnected before forwarding")
            state.decision = "abandoned"
            if flow.killable:
                flow.kill()
            return
        if hold.decision == "approved":
            self.book.mark_collected(hold)
            self._mcp_prints.pop(hold.id, None)
            self._forward_approved(flow, state, hold)
        else:
            self._deny(flow, state, hold)

    async def _watch_clients(self) -> None:
        """Cancel holds whose agent hung up. mitmproxy only notices a closed client when
        the flow moves on, so one task checks every waiting connection a few times a
        second (cheap: a flag test per held flow, no task per hold)."""
        while True:
            await asyncio.sleep(DISCONNECT_POLL_S)
            for hold_id, flow in list(self.waiting.items()):
                # An MCP call stays for the reviewer: approved, its re-send is admitted.
                if client_gone(flow) and hold_id not in self._mcp_prints:
                    self.book.abandon(hold_id)

    def _forward_approved(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord) -> None:
        differs = hold.binding.difference(RequestPrint.of(flow.request))
        if differs is not None:
            # The approved request is not what the reviewer saw: refuse rather than forward.
            state.emit("approval_mismatch", actor="gateway", hold=hold.id, differs=differs)
            refuse(flow, state, 403, "approval_mismatch", f"the request differs from the approved one: {differs}")
            return
        state.decision = "approved"
        state.actor = hold.decided_by
        state.reason = hold.spec.reason

    def _deny(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord) -> None:
        state.decision = hold.decision
        state.actor = hold.decided_by
        # A collection (async mode) is a new flow: name the held one it asked about.
        extra = {"approval": hold.id} if hold.id != flow.id else {}
        # Every refusal carries a reason (the agent's SDK shows it; the model can react).
        if hold.decision == "rejected":
            reason = f"rejected by reviewer {hold.decided_by}" + (f": {hold.comment}" if hold.comment else "")
            reply(flow, 403, "rejected_by_reviewer", "rejected", reason=reason,
                  reviewer=hold.decided_by, comment=hold.comment, **extra)
        else:
            waited = round((hold.decided_at or time.time()) - hold.created, 1)
            reason = (hold.detail if hold.detail and hold.detail != "timeout"
                      else f"no reviewer decided within {format_duration(hold.spec.timeout)}")
            reply(flow, 403, "approval_expired", hold.decision or "expired", reason=reason,
                  waited_s=waited, **extra)

    def _answer_pending(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord) -> None:
        state.decision = "held"
        body = {
            "status": "pending",
            "flow_id": hold.id,
            "poll": hold.url,
            "resend_with_header": {"X-Portcullis-Approval": hold.id},
            "expires_in_s": round(max(0.0, hold.deadline - time.time()), 1),
            "reason": hold.spec.reason,
        }
        flow.response = http.Response.make(202, json.dumps(body, ensure_ascii=False), {
            "Content-Type": "application/json", DECISION_HEADER: "held", FLOW_ID_HEADER: flow.id,
            "Cache-Control": "no-store", "Retry-After": "2",
        })

    def _collect(self, flow: http.HTTPFlow, state: FlowState, hold_id: str,
                 binding: RequestPrint, verdict: VerdictPrint) -> None:
        """An async-mode agent re-sends the held request to collect the decision."""
        collected = self.book.collect(flow.id, hold_id, state.identity, binding, verdict)
        hold = collected.hold
        if collected.outcome == "unknown" or hold is None:
            refuse(flow, state, 404, "unknown_approval", "there is no held request with this id",
                   approval=hold_id[:64])
        elif collected.outcome == "mismatch":
            refuse(flow, state, 403, "approval_mismatch",
                   f"an approval is valid only for the identical request from the same identity, "
                   f"decided by the same rules: {collected.differs}", approval=hold.id)
        elif collected.outcome == "pending":
            self._answer_pending(flow, state, hold)
        elif collected.outcome == "approved":
            self._forward_approved(flow, state, hold)
        elif collected.outcome == "used":
            refuse(flow, state, 409, "approval_already_used", "this approval was already used once",
                   approval=hold.id)
        else:
            self._deny(flow, state, hold)


    # --- MCP calls: re-sends and held streams (addons.mcp) ------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _mcp_print(self, flow: http.HTTPFlow) -> RequestPrint | None:
        """What makes a re-sent ``tools/call`` identical: the server, tool and canonical
        arguments (a retry has a new JSON-RPC id, maybe new session headers)."""
        call = self.mcp.call_of(flow) if self.mcp is not None else None
        message = call.single if call is not None else None
        if message is None or message.method != "tools/call" or not isinstance(message.name, str):
            return None
        return RequestPrint(method="MCP tools/call", url=flow.request.pretty_url, headers=(),
                            body_sha256=sha256(jsonrpc.canonical(
                                {"tool": message.name, "arguments": message.arguments})))

    def _pending_resend(self, identity: str, mcp_print: RequestPrint,
                        verdict: VerdictPrint) -> HoldRecord | None:
        """A pending hold of the identical MCP call whose client is gone, if there is one."""
        for hold_id, held_print in list(self._mcp_prints.items()):
            if held_print != mcp_print:
                continue
            hold = self.book.find(hold_id)
            waiter = self.waiting.get(hold_id)
            if hold is not None and hold.decision is None and hold.identity == identity \
                    and hold.verdict == verdict and (waiter is None or client_gone(waiter)):
                return hold
        return None

    async def _join(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord,
                    mcp_print: RequestPrint, verdict: VerdictPrint) -> None:
        """Wait for the decision of ``hold`` in this (re-sent) flow: no second hold."""
        log.info("re-sent MCP call %s waits for the pending hold %s", flow.id, hold.id)
        state.decision = "held"
        hold = await self._wait_joined(flow, hold)
        if hold.decision == "approved" and not client_gone(flow):
            if self._claim_joined(flow, state, hold, mcp_print, verdict):
                state.decision, state.actor, state.reason = "approved", hold.decided_by, hold.spec.reason
        elif hold.decision == "approved" or hold.decision == "abandoned":
            state.decision = "abandoned"
            if flow.killable:
                flow.kill()
        else:
            self._deny(flow, state, hold)

    async def _wait_joined(self, flow: http.HTTPFlow, hold: HoldRecord) -> HoldRecord:
        """Wait (as its waiter now) for the decision of a hold another flow opened."""
        decided = self._decided.setdefault(hold.id, asyncio.Event())
        self.waiting[hold.id] = flow
        try:
            await asyncio.wait_for(decided.wait(), timeout=max(0.0, hold.deadline - time.time()))
        except TimeoutError:
            self.book.expire(hold.id)
        finally:
            if self.waiting.get(hold.id) is flow:
                self.waiting.pop(hold.id, None)
        return self.book.get(hold.id)

    def _claim_joined(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord,
                      mcp_print: RequestPrint, verdict: VerdictPrint) -> bool:
        """Take the approval of a joined hold for this flow (True), or refuse it (False):
        the first waiter may have turned the approval into a re-send grant already, or
        another retry used it."""
        grant = self.book.use_grant(flow.id, state.identity, mcp_print, verdict)
        if grant is None and hold.collected:
            refuse(flow, state, 409, "approval_already_used", "this approval was already used once",
                   approval=hold.id)
            return False
        if grant is None:
            self.book.mark_collected(hold)
        return True

    def _join_on_stream(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord,
                        mcp_print: RequestPrint, verdict: VerdictPrint) -> None:
        """A retry that joins a pending hold and accepts SSE gets the same kept-alive
        stream as a first held call; the decision is followed in a task."""
        log.info("re-sent MCP call %s waits for the pending hold %s (on a held stream)", flow.id, hold.id)
        stream, original = self._redirect_to_stream(flow, state, hold)
        self._spawn(self._follow_joined(flow, state, hold, stream, original, mcp_print, verdict))

    async def _follow_joined(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord,
                             stream: HeldStream, original: http.Request, mcp_print: RequestPrint,
                             verdict: VerdictPrint) -> None:
        try:
            hold = await self._wait_joined(flow, hold)
            log.info("joined held stream %s of %s: %s%s", flow.id, hold.id, hold.decision,
                     " (client gone)" if client_gone(flow) else "")
            if hold.decision == "approved" and not client_gone(flow):
                kept = flow.response
                if self._claim_joined(flow, state, hold, mcp_print, verdict):
                    await self._send_approved(flow, state, hold, stream, original)
                else:  # refused in the flow's shape: sent on the stream, the flow left as it was
                    assert flow.response is not None
                    stream.send(jsonrpc.sse_event(json.loads(flow.response.content or b"{}")))
                    flow.response = kept
            elif hold.decision == "approved" or hold.decision == "abandoned":
                state.decision = "abandoned"
            else:
                stream.send(jsonrpc.sse_event(self._denial(flow, state, hold)))
        except Exception:  # noqa: BLE001 - the stream must end whatever happened
            log.exception("joined held stream %s of %s failed", flow.id, hold.id)
        finally:
            self.held_streams.streams.pop(stream.token, None)  # never connected: forget it
            stream.close()

    def _admit_resend(self, hold: HoldRecord) -> None:
        mcp_print = self._mcp_prints.pop(hold.id, None)
        if mcp_print is not None and self.book.resend_grant(hold.id, mcp_print, RESEND_WINDOW_S):
            log.info("approved MCP call %s: its client gave up; one identical re-send is admitted "
                     "for %s", hold.id, format_duration(RESEND_WINDOW_S))

    def _streamable(self, flow: http.HTTPFlow) -> bool:
        accept = flow.request.headers.get("accept", "").lower()
        return self.held_streams.running and "text/event-stream" in accept

    def _hold_on_stream(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord) -> None:
        """Answer the held call with an SSE stream kept alive until the decision: the flow
        goes to the local held-stream server (addons.mcp.heldstream), which mitmproxy
        streams; the decision is followed in a task, not in this hook."""
        stream, original = self._redirect_to_stream(flow, state, hold)
        self._spawn(self._follow(flow, state, hold, stream, original))

    def _redirect_to_stream(self, flow: http.HTTPFlow, state: FlowState,
                            hold: HoldRecord) -> tuple[HeldStream, http.Request]:
        """Point ``flow`` at a new held stream (keepalives: progress notifications for the
        call's own progressToken, comments otherwise); returns it and the request the
        agent made."""
        call = self.mcp.call_of(flow)
        message = call.single if call is not None else None
        params = message.params if message is not None and isinstance(message.params, dict) else {}
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        stream = self.held_streams.open(token, f"waiting for approval: {hold.spec.reason}")
        original = flow.request.copy()
        self._streamed[flow.id] = original
        request = flow.request
        request.scheme, request.host, request.port = "http", "127.0.0.1", self.held_streams.port or 0
        request.path = self.held_streams.path_of(stream)
        request.headers["host"] = f"127.0.0.1:{request.port}"
        state.decision = "held"
        return stream, original

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        original = self._streamed.pop(flow.id, None)
        if original is None or flow.response is None:
            return
        flow.request = original  # the record shows the call the agent made, not our stream's URL
        # Streamed as it is written, and kept for the recorder as the agent received it;
        # the masks ran on the approved call's own flow (masking leaves this one alone).
        streamhooks.start(flow, self.states.of(flow), None, changes_length=False)

    async def _follow(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord,
                      stream: HeldStream, original: http.Request) -> None:
        try:
            await self._await_decision(flow, hold)
            hold = self.book.get(hold.id)
            log.info("held stream of %s: %s%s", hold.id, hold.decision,
                     " (client gone)" if client_gone(flow) else "")
            if hold.decision == "approved" and client_gone(flow):
                self._admit_resend(hold)
                state.decision = "abandoned"
            elif hold.decision == "approved":
                self.book.mark_collected(hold)
                self._mcp_prints.pop(hold.id, None)
                await self._send_approved(flow, state, hold, stream, original)
            elif hold.decision != "abandoned":
                stream.send(jsonrpc.sse_event(self._denial(flow, state, hold)))
            else:
                state.decision = "abandoned"
        except Exception:  # noqa: BLE001 - the stream must end whatever happened
            log.exception("held stream of %s failed", hold.id)
        finally:
            self._mcp_prints.pop(hold.id, None)
            self.held_streams.streams.pop(stream.token, None)  # never connected: forget it
            stream.close()

    async def _await_decision(self, flow: http.HTTPFlow, hold: HoldRecord) -> None:
        decided = self._decided[hold.id] = asyncio.Event()
        self.waiting[hold.id] = flow
        try:
            await asyncio.wait_for(decided.wait(), timeout=max(0.0, hold.deadline - time.time()))
        except TimeoutError:
            self.book.expire(hold.id)
        finally:
            self.waiting.pop(hold.id, None)
            self._decided.pop(hold.id, None)

    def _denial(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord) -> Any:
        """The JSON-RPC denial of a rejected or expired held call (the flow's own shape)."""
        return self._answer_of(flow, lambda: self._deny(flow, state, hold))

    @staticmethod
    def _answer_of(flow: http.HTTPFlow, answer: Callable[[], Any]) -> Any:
        """The JSON document ``answer()`` would set as the flow's response (a refusal in the
        flow's own shape), for a held stream to send; the flow itself is left as it was."""
        kept = flow.response
        answer()
        assert flow.response is not None
        document = json.loads(flow.response.content or b"{}")
        flow.response = kept
        return document

    async def _send_approved(self, flow: http.HTTPFlow, state: FlowState, hold: HoldRecord,
                             stream: HeldStream, original: http.Request) -> None:
        """Send the approved call upstream as its own flow (through every addon, as a
        replay of this one by the approver) and relay its response into the stream."""
        client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0),
                                   timestamp_start=time.time())
        client.state = ConnectionState.OPEN
        carrier = http.HTTPFlow(client, connection.Server(address=(original.host, original.port)))
        carrier.request = original.copy()
        carried = self.states.of(carrier)
        carried.identity, carried.groups, carried.session_id = state.identity, state.groups, state.session_id
        carried.replay_of, carried.actor = flow.id, hold.decided_by
        done = asyncio.get_running_loop().create_future()
        self._continuations[carrier.id] = Continuation(hold, stream, done)
        state.decision, state.actor, state.reason = "approved", hold.decided_by, hold.spec.reason
        ctx.master.commands.call("replay.client", [carrier])
        log.info("approved held call %s goes upstream as flow %s", hold.id, carrier.id)
        try:
            await asyncio.wait_for(done, CONTINUATION_TIMEOUT_S)
        except TimeoutError:
            stream.send(jsonrpc.sse_event(_relay_error(flow, hold, "the approved call took too long upstream")))
        finally:
            self._continuations.pop(carrier.id, None)


@dataclass
class Continuation:
    """An approved held-stream call on its way upstream: where its response goes."""

    hold: HoldRecord
    stream: HeldStream
    done: asyncio.Future
    relayed: bool = False


def _relay_error(flow: http.HTTPFlow, hold: HoldRecord, reason: str) -> dict[str, Any]:
    ids = jsonrpc.request_ids(jsonrpc.parse(flow.request.raw_content or b""))
    return {"jsonrpc": "2.0", "id": ids[0] if ids else None, "error": {
        "code": JSONRPC_CODES["upstream_error"], "message": f"{reason} (Portcullis upstream_error: flow {flow.id})",
        "data": {"error": "upstream_error", "reason": reason, "flow_id": flow.id, "approval": hold.id}}}


class ContinuationRelays:
    """Last in the addon chain: relays each approved held-stream call's response, after
    every other addon (masking, the credentials' echo scrubber) had its say."""

    name = "portcullis_held_relays"

    def __init__(self, approvals: ApprovalsAddon) -> None:
        self.approvals = approvals

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        relay = self.approvals._continuations.get(flow.id)
        response = flow.response
        if relay is None or response is None or not response.stream:
            return
        if "text/event-stream" not in response.headers.get("content-type", "").lower():
            return
        inner = response.stream if callable(response.stream) else None
        relay.relayed = True

        def forward(chunk: bytes) -> bytes | list[bytes]:
            produced = inner(chunk) if inner is not None else chunk
            for part in [produced] if isinstance(produced, bytes) else produced:
                relay.stream.send(part)
            return produced

        response.stream = forward

    def response(self, flow: http.HTTPFlow) -> None:
        relay = self.approvals._continuations.get(flow.id)
        if relay is None or relay.done.done():
            return
        response = flow.response
        assert response is not None
        if not relay.relayed:
            content = response.content or b""
            if "text/event-stream" in response.headers.get("content-type", "").lower():
                relay.stream.send(content)
            else:
                document = jsonrpc.parse(content)
                if document is None:
                    document = _relay_error(flow, relay.hold, f"the server answered HTTP {response.status_code} "
                                            "without a JSON-RPC message")
                relay.stream.send(jsonrpc.sse_event(document))
        relay.done.set_result(True)

    def error(self, flow: http.HTTPFlow) -> None:
        relay = self.approvals._continuations.get(flow.id)
        if relay is None or relay.done.done():
            return
        reason = flow.error.msg if flow.error is not None else "the connection failed"
        relay.stream.send(jsonrpc.sse_event(_relay_error(flow, relay.hold, f"upstream: {reason}")))
        relay.done.set_result(True)
