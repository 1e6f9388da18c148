"""Hold risky requests until a human reviewer approves or rejects them.

The policy addon leaves ``hold`` verdicts to this addon. Two ways for an agent to wait:

* **wait** (default): the agent's HTTP call stays open. Our ``request`` hook awaits the
  decision (an ``asyncio.Event``) under ``asyncio.wait_for(timeout)``; mitmproxy keeps
  the connection open meanwhile and serves other agents normally.
* **async** (``X-Portcullis-Wait: async``): the agent gets ``202 {"status": "pending",
  "flow_id", "poll"}`` at once and later re-sends the identical request with
  ``X-Portcullis-Approval: <flow_id>`` to collect the outcome.

An approval is bound to what the reviewer saw (method, URL, body hash, every end-to-end
header) and to the verdict (matched rules, action, approvers); see addons.holds.binding.
It can be used once. A collection that differs in any of these is refused with 403
``approval_mismatch`` (the reason names what differs, never a header value). A reviewer
may also approve with a *grant*: requests from the same identity with the same print
and verdict pass for a while, until the grant expires or is revoked; a request that
differs is not covered and is held anew, like any other.

Limits, so that one agent cannot flood reviewers or memory (top-level rule settings,
see addons.holds.spec): at most ``max_pending_holds_per_identity`` pending holds per
identity (429 ``too_many_pending_holds``), and a holdable body of at most
``max_held_body`` bytes (413 ``held_body_too_large``). A hold keeps the shown prefix of
the body, its hash and a reference to the flow's own bytes (for the download), which it
drops once decided. Hold rules also refuse a JSON body with a duplicated key (400
``duplicate_json_key``): the reviewer is shown one copy, the upstream may read the other.

A replay runs as the original agent, but the reviewer who replayed it cannot decide its
hold (``replay_self_approval``): otherwise one reviewer could overturn another's
rejection by replaying the flow and approving the replay.

Reviewers act from another thread (the review UI); every state change happens on the
proxy's event loop (see :meth:`ApprovalsAddon.call`), so no locks are needed here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState

from addons.core.flowstate import Event, FlowState, state_of, subscribe, unsubscribe
from addons.core.replies import DECISION_HEADER, FLOW_ID_HEADER, reply
from addons.holds.binding import (
    DecodedBody,
    RequestPrint,
    VerdictPrint,
    decode_body,
    duplicated_key,
    sha256,
    shown_body,
)
from addons.holds.spec import (
    DEFAULT_MAX_HELD_BODY,
    DEFAULT_MAX_PENDING_HOLDS_PER_IDENTITY,
    HoldSpec,
    format_duration,
    hold_spec,
)

log = logging.getLogger("portcullis.approvals")

WAIT_HEADER = "x-portcullis-wait"
APPROVAL_HEADER = "x-portcullis-approval"
JUSTIFICATION_HEADER = "x-portcullis-justification"
JUSTIFICATION_MAX = 1000
#: Headers never shown to reviewers in clear.
SECRET_HEADER_WORDS = ("authorization", "cookie", "token", "secret", "password", "api-key", "apikey")
BODY_SHOWN_MAX = 64 * 1024
DISCONNECT_POLL_S = 0.2
HISTORY_MAX = 1000


class DecisionError(Exception):
    """A reviewer's action that cannot be carried out; maps onto an HTTP error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Actor:
    """Who is deciding: a reviewer's name and groups (from the reviewers file)."""

    name: str
    groups: frozenset[str]


@dataclass
class Vote:
    reviewer: str
    comment: str
    at: float


def is_secret_header(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_HEADER_WORDS)


def client_gone(flow: http.HTTPFlow) -> bool:
    return not (flow.client_conn.state & ConnectionState.CAN_READ)


@dataclass
class Hold:
    id: str
    state: FlowState
    spec: HoldSpec
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: str
    body_truncated: bool
    body_warning: str | None
    body_size: int
    binding: RequestPrint
    verdict: VerdictPrint
    body_sha256: str
    justification: str | None
    mode: str  # "wait" | "async"
    matched: list[dict[str, Any]]  # every rule that matched: name, action, reason
    created: float
    deadline: float
    event: asyncio.Event = field(default_factory=asyncio.Event)
    votes: list[Vote] = field(default_factory=list)
    decision: str | None = None  # approved | rejected | expired | abandoned
    decided_by: str | None = None
    comment: str = ""
    decided_at: float | None = None
    detail: str | None = None  # e.g. expiry reason
    escalated: bool = False
    grant_id: str | None = None
    collected: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    #: The exact body bytes (the flow's own object, not a copy) until the hold is decided.
    raw: bytes | None = field(default=None, repr=False)
    replay_of: str | None = None
    replayed_by: str | None = None  # the reviewer who replayed it: may not decide it

    @property
    def identity(self) -> str:
        return self.state.identity

    def allowed_groups(self) -> frozenset[str] | None:
        """Groups that may decide now; None means any reviewer."""
        if self.spec.approvers is None:
            return None
        return self.spec.approvers | (self.spec.escalate_to if self.escalated else frozenset())

    def summary(self) -> dict[str, Any]:
        now = time.time()
        return {
            "flow_id": self.id,
            "status": self.decision or "pending",
            "identity": self.identity,
            "groups": sorted(self.state.groups),
            "session_id": self.state.session_id,
            "rule": self.spec.rule,
            "rules": list(self.state.rules),
            "reason": self.spec.reason,
            "justification": self.justification,
            "method": self.method,
            "url": self.url,
            "mode": self.mode,
            "created_at": self.created,
            "deadline": self.deadline,
            "age_s": round(now - self.created, 1),
            "time_left_s": max(0.0, round(self.deadline - now, 1)) if self.decision is None else 0.0,
            "approvers": sorted(self.spec.approvers) if self.spec.approvers is not None else None,
            "escalate_to": sorted(self.spec.escalate_to),
            "escalated": self.escalated,
            "approvals_required": self.spec.approvals_required,
            "approvals": [{"reviewer": v.reviewer, "comment": v.comment, "at": v.at} for v in self.votes],
            "max_grant_s": self.spec.grant,
            "decided_by": self.decided_by,
            "comment": self.comment,
            "decided_at": self.decided_at,
            "detail": self.detail,
            "grant_id": self.grant_id,
            "replay_of": self.replay_of,
            "replayed_by": self.replayed_by,
        }

    def details(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "matched": self.matched,
            "headers": [[k, v] for k, v in self.headers],
            "body": self.body,
            "body_truncated": self.body_truncated,
            "body_warning": self.body_warning,
            "body_size": self.body_size,
            "body_sha256": self.body_sha256,
            "body_available": self.raw is not None,
        }


@dataclass
class Grant:
    id: str
    flow_id: str
    identity: str
    binding: RequestPrint
    verdict: VerdictPrint
    rule: str | None
    created_by: str
    created_at: float
    expires_at: float
    uses: int = 0

    @property
    def method(self) -> str:
        return self.binding.method

    @property
    def url(self) -> str:
        return self.binding.url

    def matches(self, identity: str, binding: RequestPrint, verdict: VerdictPrint, now: float) -> bool:
        """Only the request the reviewer saw (every bound header), with the same verdict."""
        return (now < self.expires_at and identity == self.identity
                and binding == self.binding and verdict == self.verdict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "flow_id": self.flow_id, "identity": self.identity,
            "method": self.method, "url": self.url, "rule": self.rule,
            "created_by": self.created_by, "created_at": self.created_at,
            "expires_at": self.expires_at, "uses": self.uses,
        }


Watcher = Callable[[str, dict[str, Any]], None]


class ApprovalsAddon:
    name = "portcullis_approvals"

    def __init__(self) -> None:
        self.holds: OrderedDict[str, Hold] = OrderedDict()
        self.grants: dict[str, Grant] = {}
        #: Told about every change (kind, payload), on the event loop; the UI's live feed.
        self.watchers: list[Watcher] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Held flows whose agent is waiting on the open connection (wait mode).
        self.waiting: dict[str, http.HTTPFlow] = {}
        self._watcher: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------

    def running(self) -> None:
        self.loop = asyncio.get_running_loop()
        subscribe(self._on_event)
        if self._watcher is None:
            self._watcher = self.loop.create_task(self._watch_clients())

    def _on_event(self, event: Event) -> None:
        """Keep each hold's audit events at hand for the review page and the API."""
        hold = self.holds.get(event.flow_id)
        if hold is not None and len(hold.events) < 200:
            hold.events.append({"kind": event.kind, "at": event.at, "actor": event.actor,
                                "detail": event.detail})

    def events_of(self, flow_id: str) -> list[dict[str, Any]]:
        return list(self.get(flow_id).events)

    def done(self) -> None:
        for hold in list(self.pending()):
            self._finish(hold, "expired", "gateway", detail="gateway_shutdown")
        unsubscribe(self._on_event)
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    # --- the data path -------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        state = state_of(flow)
        verdict = state.extras.get("verdict")
        if verdict is None or verdict.action != "hold":
            return
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        spec = hold_spec(verdict.rule, self._policy(), verdict.reason)
        binding, verdict_print = RequestPrint.of(flow.request), VerdictPrint.of(verdict, spec)
        if APPROVAL_HEADER in state.control:
            self._collect(flow, state, state.control[APPROVAL_HEADER].strip(), binding, verdict_print)
            return
        if self._use_grant(flow, state, binding, verdict_print):
            return
        body = self._holdable(flow, state)
        if body is None:
            return
        hold = self._hold(flow, state, verdict, spec, binding, verdict_print, body)
        if state.control.get(WAIT_HEADER, "").strip().lower() == "async":
            hold.timers.append(self.loop.call_at(
                self.loop.time() + hold.deadline - time.time(), self._expire, hold))
            self._answer_pending(flow, state, hold)
            return
        await self._wait(flow, state, hold)

    def error(self, flow: http.HTTPFlow) -> None:
        """A flow that died while held (client gone, killed) is abandoned, never forwarded."""
        hold = self.holds.get(flow.id)
        if hold is not None and hold.decision is None:
            self._finish(hold, "abandoned", "gateway", detail="client disconnected")
            state_of(flow).decision = "abandoned"

    def _policy(self) -> Any:
        policy_addon = ctx.master.addons.get("portcullis_policy") if _has_master() else None
        return getattr(policy_addon, "policy", None)

    def _setting(self, key: str, default: Any) -> Any:
        policy = self._policy()
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
        pending = sum(1 for h in self.holds.values() if h.decision is None and h.identity == state.identity)
        if pending >= cap:
            refuse(flow, state, 429, "too_many_pending_holds",
                   f"{state.identity} already has {pending} requests waiting for review (the limit is "
                   f"{cap}); wait for decisions before sending more", pending=pending, limit=cap,
                   headers={"Retry-After": "30"})
            return None
        return body

    def _hold(self, flow: http.HTTPFlow, state: FlowState, verdict: Any, spec: HoldSpec,
              binding: RequestPrint, verdict_print: VerdictPrint, body: DecodedBody) -> Hold:
        justification = state.control.get(JUSTIFICATION_HEADER)
        if justification is not None:
            justification = justification.strip()[:JUSTIFICATION_MAX]
            state.extras["justification"] = justification
        request = flow.request
        raw = request.raw_content or b""
        shown = shown_body(body, BODY_SHOWN_MAX)
        text = shown.text
        for secret in state.secrets:
            text = text.replace(secret, "[redacted]")
        now = time.time()
        hold = Hold(
            id=flow.id,
            state=state,
            spec=spec,
            method=request.method.upper(),
            url=request.pretty_url,
            headers=[(k, "[redacted]" if is_secret_header(k) or k.lower() in state.injected_headers else v)
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
        )
        self.holds[hold.id] = hold
        self._trim_history()
        if spec.escalate_after is not None and spec.escalate_after < spec.timeout:
            assert self.loop is not None
            hold.timers.append(self.loop.call_later(spec.escalate_after, self._escalate, hold))
        state.emit("held", actor="gateway", rule=spec.rule, reason=spec.reason, method=hold.method,
                   url=hold.url, identity=hold.identity, justification=justification,
                   timeout_s=spec.timeout, approvers=hold.summary()["approvers"],
                   approvals_required=spec.approvals_required, mode=hold.mode)
        log.info("held %s %s for %s (rule %s, %s)", hold.method, hold.url, hold.identity,
                 spec.rule, format_duration(spec.timeout))
        self._tell("held", hold.summary())
        return hold

    async def _wait(self, flow: http.HTTPFlow, state: FlowState, hold: Hold) -> None:
        self.waiting[hold.id] = flow
        try:
            await asyncio.wait_for(hold.event.wait(), timeout=max(0.0, hold.deadline - time.time()))
        except TimeoutError:
            self._expire(hold)
        finally:
            self.waiting.pop(hold.id, None)
        if hold.decision == "abandoned" or (hold.decision == "approved" and client_gone(flow)):
            # Never forward for a client that has gone; the kill ends the flow in `error`.
            if hold.decision == "approved":
                state.emit("abandoned", actor="gateway", reason="client disconnected before forwarding")
            state.decision = "abandoned"
            if flow.killable:
                flow.kill()
            return
        if hold.decision == "approved":
            hold.collected = True
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
                hold = self.holds.get(hold_id)
                if hold is not None and hold.decision is None and client_gone(flow):
                    self._finish(hold, "abandoned", "gateway", detail="client disconnected")

    def _forward_approved(self, flow: http.HTTPFlow, state: FlowState, hold: Hold) -> None:
        differs = hold.binding.difference(RequestPrint.of(flow.request))
        if differs is not None:
            # The approved request is not what the reviewer saw: refuse rather than forward.
            state.emit("approval_mismatch", actor="gateway", hold=hold.id, differs=differs)
            refuse(flow, state, 403, "approval_mismatch", f"the request differs from the approved one: {differs}")
            return
        state.decision = "approved"
        state.actor = hold.decided_by
        state.reason = hold.spec.reason

    def _deny(self, flow: http.HTTPFlow, state: FlowState, hold: Hold) -> None:
        state.decision = hold.decision
        state.actor = hold.decided_by
        # A collection (async mode) is a new flow: name the held one it asked about.
        extra = {"approval": hold.id} if hold.id != flow.id else {}
        if hold.decision == "rejected":
            reply(flow, 403, "rejected_by_reviewer", "rejected",
                  reviewer=hold.decided_by, comment=hold.comment, **extra)
        else:
            if hold.detail and hold.detail != "timeout":
                extra["reason"] = hold.detail
            reply(flow, 403, "approval_expired", hold.decision or "expired",
                  waited_s=round((hold.decided_at or time.time()) - hold.created, 1), **extra)

    def _answer_pending(self, flow: http.HTTPFlow, state: FlowState, hold: Hold) -> None:
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
        """An async-mode agent re-sends the held request to collect the decision.

        It must be the request the reviewer saw (every bound header) and the policy must
        still decide it the same way (same rules, action, approvers), else 403.
        """
        hold = self.holds.get(hold_id)
        if hold is None:
            refuse(flow, state, 404, "unknown_approval", "there is no held request with this id",
                   approval=hold_id[:64])
            return
        if hold.identity != state.identity:
            differs: str | None = "it was held for another identity"
        else:
            differs = hold.binding.difference(binding) or hold.verdict.difference(verdict)
        if differs is not None:
            state.emit("approval_mismatch", actor=state.identity, hold=hold.id, differs=differs)
            refuse(flow, state, 403, "approval_mismatch",
                   f"an approval is valid only for the identical request from the same identity, "
                   f"decided by the same rules: {differs}", approval=hold.id)
            return
        if hold.decision is None:
            self._answer_pending(flow, state, hold)
        elif hold.decision == "approved" and not hold.collected:
            hold.collected = True
            state.emit("approval_used", actor=state.identity, hold=hold.id)
            self._forward_approved(flow, state, hold)
        elif hold.decision == "approved":
            refuse(flow, state, 409, "approval_already_used", "this approval was already used once",
                   approval=hold.id)
        else:
            self._deny(flow, state, hold)

    def _use_grant(self, flow: http.HTTPFlow, state: FlowState, binding: RequestPrint,
                   verdict: VerdictPrint) -> bool:
        now = time.time()
        self._drop_expired_grants(now)
        grant = next((g for g in self.grants.values()
                      if g.matches(state.identity, binding, verdict, now)), None)
        if grant is None:
            return False
        grant.uses += 1
        state.decision = "approved"
        state.actor = grant.created_by
        state.emit("grant_used", actor=grant.created_by, grant=grant.id, granted_on=grant.flow_id,
                   uses=grant.uses)
        self._tell("grants", {})
        return True

    # --- decisions (run on the event loop; the UI gets here through `call`) -----------

    def pending(self) -> list[Hold]:
        return [h for h in self.holds.values() if h.decision is None]

    def queue(self) -> list[dict[str, Any]]:
        """Pending holds, most urgent first (least time left), then newest."""
        holds = sorted(self.pending(), key=lambda h: (h.deadline, -h.created))
        return [h.summary() for h in holds]

    def get(self, hold_id: str) -> Hold:
        hold = self.holds.get(hold_id)
        if hold is None:
            raise DecisionError(404, "unknown_flow", f"no held flow {hold_id}")
        return hold

    def check_may_decide(self, hold: Hold, actor: Actor, record: bool = True) -> None:
        """Raise DecisionError when ``actor`` may not decide ``hold`` (recorded if ``record``)."""
        if hold.decision is not None:
            raise DecisionError(409, "already_decided", f"flow {hold.id} was already {hold.decision}")
        if actor.name == hold.identity:
            if record:
                self._refuse(hold, actor, "self_approval")
            raise DecisionError(403, "self_approval", "reviewers cannot decide their own requests")
        if hold.replayed_by is not None and actor.name == hold.replayed_by:
            if record:
                self._refuse(hold, actor, "replay_self_approval")
            raise DecisionError(403, "replay_self_approval",
                                "you replayed this request; another reviewer must decide its hold")
        allowed = hold.allowed_groups()
        if allowed is not None and not (allowed & actor.groups):
            if record:
                self._refuse(hold, actor, "not_an_approver")
            raise DecisionError(403, "not_an_approver",
                                f"this hold needs a reviewer in: {', '.join(sorted(allowed))}")

    def approve(self, hold_id: str, actor: Actor, comment: str = "", grant_s: float | None = None) -> Hold:
        hold = self.get(hold_id)
        self.check_may_decide(hold, actor)
        if any(v.reviewer == actor.name for v in hold.votes):
            raise DecisionError(409, "already_approved", "you already approved this flow; another reviewer must")
        if grant_s is not None:
            if hold.spec.grant is None:
                raise DecisionError(400, "grant_not_allowed", "this rule does not allow grants")
            if grant_s > hold.spec.grant:
                raise DecisionError(400, "grant_too_long",
                                    f"this rule allows grants of at most {format_duration(hold.spec.grant)}")
        hold.votes.append(Vote(actor.name, comment, time.time()))
        if len(hold.votes) < hold.spec.approvals_required:
            hold.state.emit("approval", actor=actor.name, comment=comment, approvals=len(hold.votes),
                            required=hold.spec.approvals_required)
            self._tell("updated", hold.summary())
            return hold
        if grant_s is not None:
            self._grant(hold, actor, grant_s)
        self._finish(hold, "approved", actor.name, comment)
        return hold

    def reject(self, hold_id: str, actor: Actor, comment: str = "") -> Hold:
        hold = self.get(hold_id)
        self.check_may_decide(hold, actor)
        self._finish(hold, "rejected", actor.name, comment)
        return hold

    def active_grants(self) -> list[dict[str, Any]]:
        self._drop_expired_grants(time.time())
        return [g.to_json() for g in sorted(self.grants.values(), key=lambda g: g.expires_at)]

    def revoke(self, grant_id: str, actor: Actor) -> Grant:
        grant = self.grants.pop(grant_id, None)
        if grant is None:
            raise DecisionError(404, "unknown_grant", f"no active grant {grant_id}")
        hold = self.holds.get(grant.flow_id)
        if hold is not None:
            hold.state.emit("grant_revoked", actor=actor.name, grant=grant.id, uses=grant.uses)
        self._tell("grants", {})
        return grant

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        decided = [h for h in self.holds.values() if h.decision is not None]
        decided.sort(key=lambda h: h.decided_at or 0, reverse=True)
        return [h.summary() for h in decided[:limit]]

    def _grant(self, hold: Hold, actor: Actor, seconds: float) -> None:
        now = time.time()
        grant = Grant(uuid.uuid4().hex[:12], hold.id, hold.identity, hold.binding, hold.verdict,
                      hold.spec.rule, actor.name, now, now + seconds)
        self.grants[grant.id] = grant
        hold.grant_id = grant.id
        self._tell("grants", {})

    def _refuse(self, hold: Hold, actor: Actor, why: str) -> None:
        hold.state.emit("decision_refused", actor=actor.name, refused=why)

    def _escalate(self, hold: Hold) -> None:
        if hold.decision is not None or hold.escalated:
            return
        hold.escalated = True
        hold.state.emit("escalated", actor="gateway", escalate_to=sorted(hold.spec.escalate_to))
        self._tell("updated", hold.summary())

    def _expire(self, hold: Hold) -> None:
        if hold.decision is None:
            self._finish(hold, "expired", "gateway", detail="timeout")

    def _finish(self, hold: Hold, decision: str, actor: str, comment: str = "",
                detail: str | None = None) -> None:
        if hold.decision is not None:
            return
        hold.decision = decision
        hold.decided_at = time.time()
        hold.raw = None  # decided: the bytes are no longer offered for review
        hold.comment = comment
        hold.detail = detail
        if decision == "approved":
            hold.decided_by = ", ".join(v.reviewer for v in hold.votes)
        elif decision == "rejected":
            hold.decided_by = actor
        for timer in hold.timers:
            timer.cancel()
        hold.timers.clear()
        extra: dict[str, Any] = {}
        if decision == "approved":
            extra = {"approvers": [v.reviewer for v in hold.votes], "grant": hold.grant_id}
        if detail:
            extra["reason"] = detail
        hold.state.emit(decision, actor=actor, comment=comment,
                        waited_s=round(hold.decided_at - hold.created, 3), **extra)
        hold.event.set()
        self._tell("decided", hold.summary())

    def _drop_expired_grants(self, now: float) -> None:
        for grant_id in [g.id for g in self.grants.values() if g.expires_at <= now]:
            del self.grants[grant_id]

    def _trim_history(self) -> None:
        while len(self.holds) > HISTORY_MAX:
            oldest = next((k for k, h in self.holds.items() if h.decision is not None), None)
            if oldest is None:
                return
            del self.holds[oldest]

    def _tell(self, kind: str, payload: dict[str, Any]) -> None:
        for watcher in list(self.watchers):
            try:
                watcher(kind, payload)
            except Exception:  # noqa: BLE001 - a broken watcher must not break the data path
                log.exception("approvals watcher failed")

    # --- the bridge for other threads ------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10) -> Any:
        """Run ``fn(*args)`` on the proxy's event loop and return its result (or raise)."""
        loop = self.loop
        if loop is None or not loop.is_running():
            raise DecisionError(503, "gateway_not_running", "the gateway is not running")
        try:
            if asyncio.get_running_loop() is loop:
                return fn(*args)
        except RuntimeError:
            pass
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout)


def refuse(flow: http.HTTPFlow, state: FlowState, status: int, code: str, reason: str,
           headers: dict[str, str] | None = None, **fields: Any) -> None:
    """Answer the agent with a JSON refusal and record why (decision, reason, event)."""
    state.decision = "blocked"
    state.reason = reason
    state.emit("decided", action="block", error=code, reason=reason)
    reply(flow, status, code, "blocked", headers=headers, reason=reason, **fields)


def _has_master() -> bool:
    try:
        return ctx.master is not None
    except AttributeError:
        return False
