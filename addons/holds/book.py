"""The hold book: the approvals state machine, as plain data, with no proxy in sight.

A *hold* is a request waiting for reviewers. It is pending until it is decided, once:

* **approved** when ``approvals_required`` distinct reviewers have approved (each vote
  is an ``approval`` event until the last); a reviewer may approve with a *grant*,
  which lets identical requests (same identity, request print and verdict) pass until
  it expires or is revoked. A grant is offered only where the rule sets ``grant:``, and
  for a non-idempotent method (POST, PATCH, ...) only if the rule also says
  ``grant_unsafe_methods: true``: re-sending an identical refund must not issue it twice
  unless someone decided that on purpose. A grant keeps its full scope (identity,
  method, URL, body summary and hash, expiry) and each use, for the pages that show it;
* **rejected** by any one reviewer who may decide it;
* **expired** when nobody decided in time (or the gateway stopped);
* **abandoned** when the agent hung up.

Who may decide is decided here and nowhere else (:meth:`HoldBook.refusal`): nobody may
decide a decided hold (``already_decided``), their own request (``self_approval``), a
replay they started (``replay_self_approval``: one reviewer must not overturn another's
rejection by replaying the flow), or a hold outside their groups (``not_an_approver``;
after ``escalate_after`` the ``escalate_to`` groups are admitted too); and nobody may
approve twice (``already_approved``). An approval collected by an async agent is
single use; it and a grant cover only the request the reviewer saw (see
addons.holds.binding). One identity may have at most a set number of pending holds.

Everything that happens is published as an :class:`~addons.core.events.Event` on the
bus, with the hold's flow id. Records are dataclasses; the book keeps them in a
:class:`~addons.holds.store.HoldStore` (memory by default). The book is not thread
safe: it is used on the proxy's event loop (the review UI reaches it through
addons.holds.desk). Timers (escalation, expiry) belong to whoever runs the book: they
call :meth:`HoldBook.escalate` and :meth:`HoldBook.expire`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from addons.core.events import Event, EventBus, EventKind
from addons.holds.store import HoldStore, MemoryHoldStore
from addons.holds.summary import render as render_summary

if TYPE_CHECKING:  # the prints are compared, never built, here
    from addons.holds.binding import RequestPrint, VerdictPrint
    from addons.holds.spec import HoldSpec

#: The decisions a hold can end in.
DECISIONS = ("approved", "rejected", "expired", "abandoned")
#: Methods whose repetition has no further effect (RFC 9110 9.2.2): the ones a grant may
#: cover without the rule's ``grant_unsafe_methods: true``.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: Where a decision came from (``via`` in its audit event): the review UI's pages, the
#: JSON API with a token, the terminal commands (``portcullis approve``), a Slack button.
#: The review UI derives it from how the caller authenticated, never from what it claims.
ORIGINS = ("ui", "api", "cli", "slack")
#: The header ``portcullis approve/reject`` send with their token (review_ui.holds.api):
#: a token client may say it is the terminal, nothing else.
CLIENT_HEADER = "X-Portcullis-Client"
#: Uses of a grant remembered with it (each is also a ``grant_used`` event in the recording).
GRANT_USES_KEPT = 100
SUMMARY_MAX = 160


def _check_origin(via: str | None) -> None:
    if via is not None and via not in ORIGINS:
        raise ValueError(f"unknown decision origin {via!r} (one of {', '.join(ORIGINS)})")


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


def auto_summary(body: str, limit: int = SUMMARY_MAX) -> str | None:
    """A one-line summary of a (shown, already redacted) body: ``amount=250, order=A-7``
    for a JSON object's top-level scalars, ``[3 items]`` for a list, else its first line.
    Used where the rule declares no ``summary`` template (the grants list, Slack)."""
    text = body.strip()
    if not text:
        return None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
        line = text.splitlines()[0]
    else:
        line = _summarise(document)
    line = _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


#: Shown escaped in a summary: control characters and bidirectional overrides, which
#: could make one line read as another (``\u202e`` reverses what follows).
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _summarise(document: Any) -> str:
    if isinstance(document, dict):
        parts = []
        for key, value in document.items():
            if isinstance(value, dict):
                shown = "{…}"
            elif isinstance(value, list):
                shown = f"[{len(value)} items]"
            else:
                shown = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
            parts.append(f"{key}={shown}")
        return ", ".join(parts) or "{}"
    if isinstance(document, list):
        return f"[{len(document)} items]"
    return json.dumps(document, ensure_ascii=False)


def format_duration(seconds: float) -> str:
    """600 -> '10m', 3600 -> '1h', 90 -> '90s' (here, not in addons.holds.spec, so that the
    book does not import the rules engine)."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass
class HoldRecord:
    """One held request: what the reviewer is shown, what the approval is bound to, its state."""

    id: str
    identity: str
    spec: HoldSpec
    method: str
    url: str
    headers: list[tuple[str, str]]  # secret values already redacted
    body: str  # the shown (decoded, possibly truncated, redacted) body
    body_truncated: bool
    body_warning: str | None
    body_size: int
    body_sha256: str
    binding: RequestPrint
    verdict: VerdictPrint
    created: float
    deadline: float
    mode: str = "wait"  # "wait" | "async"
    groups: frozenset[str] = frozenset()
    session_id: str | None = None
    rules: tuple[str, ...] = ()
    justification: str | None = None
    matched: list[dict[str, Any]] = field(default_factory=list)  # name, action, reason
    #: The exact body bytes until the hold is decided (offered for download).
    raw: bytes | None = field(default=None, repr=False)
    replay_of: str | None = None
    replayed_by: str | None = None  # the reviewer who replayed it: may not decide it
    #: SQL/GraphQL in the body as the rules classified it: language, summary, pretty text
    queries: list[dict[str, Any]] = field(default_factory=list)
    votes: list[Vote] = field(default_factory=list)
    decision: str | None = None  # approved | rejected | expired | abandoned
    decided_by: str | None = None
    comment: str = ""
    decided_at: float | None = None
    detail: str | None = None  # e.g. the expiry reason
    escalated: bool = False
    grant_id: str | None = None
    collected: bool = False
    #: The rule's ``summary`` line, rendered from the shown body when the hold opens.
    summary_line: str | None = None
    #: An MCP call as the reviewer sees it (addons.mcp.addon.McpAddon.describe): server,
    #: tool, arguments pretty-printed, the session's earlier tool calls; None otherwise.
    mcp: dict[str, Any] | None = None
    #: The hold's Slack message once posted, ``{"channel", "ts"}``: plain data on the
    #: record, so that with shared state whichever gateway decides can rewrite it.
    slack_message: dict[str, str] | None = None
    #: Where the deciding reviewer decided (one of :data:`ORIGINS`), kept with the decision.
    decided_via: str | None = None

    def shown_summary(self) -> str | None:
        """One line on what the body asks for: the rule's ``summary`` line, else :func:`auto_summary`."""
        return self.summary_line or auto_summary(self.body)

    def grant_unavailable(self) -> str | None:
        """Why no grant may be given for this hold, or None when one may."""
        if self.spec.grant is None:
            return "the rule allows no grants"
        if self.method not in IDEMPOTENT_METHODS and not self.spec.grant_unsafe_methods:
            return (f"{self.method} is not idempotent: a grant would let identical requests repeat it "
                    "(the rule would have to say grant_unsafe_methods: true)")
        return None

    def grant_limit(self) -> float | None:
        """The longest grant a reviewer may give now; None: no grant is offered."""
        return self.spec.grant if self.grant_unavailable() is None else None

    def allowed_groups(self) -> frozenset[str] | None:
        """Groups that may decide now; None means any reviewer."""
        if self.spec.approvers is None:
            return None
        return self.spec.approvers | (self.spec.escalate_to if self.escalated else frozenset())

    @property
    def escalate_after(self) -> float | None:
        """Seconds after creation at which the hold escalates, if it does before expiring."""
        after = self.spec.escalate_after
        return after if after is not None and after < self.spec.timeout else None

    def summary(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "flow_id": self.id,
            "status": self.decision or "pending",
            "identity": self.identity,
            "groups": sorted(self.groups),
            "session_id": self.session_id,
            "rule": self.spec.rule,
            "rules": list(self.rules),
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
            "max_grant_s": self.grant_limit(),  # None: no grant offered (see grant_unavailable)
            "grant_unavailable": self.grant_unavailable(),
            "body_summary": self.shown_summary(),
            "decided_by": self.decided_by,
            "comment": self.comment,
            "decided_at": self.decided_at,
            "decided_via": self.decided_via,
            "detail": self.detail,
            "grant_id": self.grant_id,
            "replay_of": self.replay_of,
            "replayed_by": self.replayed_by,
            "query_summary": " | ".join(q["summary"] for q in self.queries) or None,
            "summary_line": self.summary_line,
            "reject_comment_required": self.spec.reject_comment_required,
        }

    def details(self, now: float | None = None) -> dict[str, Any]:
        return {
            **self.summary(now),
            "matched": self.matched,
            "headers": [[k, v] for k, v in self.headers],
            "body": self.body,
            "body_truncated": self.body_truncated,
            "body_warning": self.body_warning,
            "body_size": self.body_size,
            "body_sha256": self.body_sha256,
            "body_available": self.raw is not None,
            "queries": self.queries,
            "mcp": self.mcp,
        }


@dataclass
class Grant:
    """A reviewer's "approve and allow identical requests for a while", with its full scope.

    Plain data (a persistent store serialises it): the prints bind it; ``body_summary``,
    ``body_size``, ``reason`` and ``comment`` are what the pages show of its scope;
    ``used`` is the last :data:`GRANT_USES_KEPT` uses, ``{"flow_id", "at"}`` each.
    """

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
    body_summary: str | None = None
    body_size: int = 0
    reason: str = ""
    comment: str = ""
    used: list[dict[str, Any]] = field(default_factory=list)
    #: At most this many uses (None: any number until it expires); 1 for the re-send of
    #: an approved MCP call whose client gave up (:meth:`HoldBook.resend_grant`).
    max_uses: int | None = None

    @property
    def method(self) -> str:
        return self.binding.method

    @property
    def url(self) -> str:
        return self.binding.url

    def covers(self, identity: str, binding: RequestPrint, verdict: VerdictPrint, now: float) -> bool:
        """Only the request the reviewer saw (every bound header), with the same verdict."""
        return (now < self.expires_at and identity == self.identity
                and binding == self.binding and verdict == self.verdict
                and (self.max_uses is None or self.uses < self.max_uses))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "flow_id": self.flow_id, "identity": self.identity,
            "method": self.method, "url": self.url, "rule": self.rule, "reason": self.reason,
            "body_summary": self.body_summary, "body_sha256": self.binding.body_sha256,
            "body_size": self.body_size,
            "bound_headers": sorted({name for name, _ in self.binding.headers}),
            "created_by": self.created_by, "created_at": self.created_at, "comment": self.comment,
            "expires_at": self.expires_at, "uses": self.uses, "used": [dict(u) for u in self.used],
        }


@dataclass(frozen=True)
class Collection:
    """What an async agent's collecting request gets (see :meth:`HoldBook.collect`).

    ``outcome``: ``unknown`` (no such hold), ``mismatch`` (``differs`` says what),
    ``pending``, ``approved`` (forward it, once), ``used`` (already collected) or
    ``denied`` (rejected, expired or abandoned).
    """

    outcome: str
    hold: HoldRecord | None = None
    differs: str | None = None


class HoldBook:
    """Holds, votes, grants and their rules (see the module docstring)."""

    def __init__(self, store: HoldStore | None = None, bus: EventBus | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store: HoldStore = store if store is not None else MemoryHoldStore()
        self.bus = bus if bus is not None else EventBus()
        self.clock = clock
        # Every addon's events about a held flow are kept with the hold (the review page).
        self.bus.subscribe(self.record_event)

    def _publish(self, flow_id: str, kind: EventKind, actor: str, **detail: Any) -> None:
        self.bus.publish(Event(flow_id, kind, self.clock(), actor, detail))

    # --- reading -------------------------------------------------------------------

    def find(self, hold_id: str) -> HoldRecord | None:
        return self.store.get(hold_id)

    def get(self, hold_id: str) -> HoldRecord:
        hold = self.store.get(hold_id)
        if hold is None:
            raise DecisionError(404, "unknown_flow", f"no held flow {hold_id}")
        return hold

    def pending(self) -> list[HoldRecord]:
        return self.store.pending()

    def queue(self) -> list[dict[str, Any]]:
        """Pending holds, most urgent first (least time left), then newest."""
        now = self.clock()
        holds = sorted(self.store.pending(), key=lambda h: (h.deadline, -h.created))
        return [h.summary(now) for h in holds]

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        now = self.clock()
        return [h.summary(now) for h in self.store.decided(limit)]

    def active_grants(self) -> list[dict[str, Any]]:
        return [g.to_json() for g in sorted(self._live_grants(), key=lambda g: g.expires_at)]

    def grant(self, grant_id: str) -> dict[str, Any] | None:
        """One live grant's scope and uses, or None (expired, revoked or unknown)."""
        found = next((g for g in self._live_grants() if g.id == grant_id), None)
        return found.to_json() if found is not None else None

    def events_of(self, hold_id: str) -> list[dict[str, Any]]:
        self.get(hold_id)
        return self.store.events(hold_id)

    def record_event(self, event: Event) -> None:
        """Keep a hold's audit events (any addon's) at hand for the review page and the API."""
        if self.store.get(event.flow_id) is not None:
            self.store.add_event(event.flow_id, {"kind": event.kind, "at": event.at,
                                                 "actor": event.actor, "detail": event.detail})

    # --- opening a hold --------------------------------------------------------------

    def pending_at_cap(self, identity: str, cap: int) -> int | None:
        """How many holds ``identity`` has pending, when that is ``cap`` or more; else None."""
        pending = sum(1 for h in self.store.pending() if h.identity == identity)
        return pending if pending >= cap else None

    def hold(self, hold: HoldRecord) -> HoldRecord:
        """Open ``hold`` (pending) and announce it."""
        spec = hold.spec
        if hold.summary_line is None and spec.summary:
            hold.summary_line = render_summary(spec.summary, hold.body)
        self.store.put(hold)
        self._publish(hold.id, EventKind.HELD, "gateway", rule=spec.rule, reason=spec.reason,
                      summary=hold.summary_line,
                      method=hold.method, url=hold.url, identity=hold.identity,
                      justification=hold.justification, timeout_s=spec.timeout,
                      approvers=sorted(spec.approvers) if spec.approvers is not None else None,
                      approvals_required=spec.approvals_required, mode=hold.mode)
        return hold

    def note_slack_message(self, hold_id: str, channel: str, ts: str) -> HoldRecord | None:
        """Keep where ``hold_id``'s Slack message is (addons.holds.notify posted it)."""
        hold = self.store.get(hold_id)
        if hold is None:
            return None
        hold.slack_message = {"channel": channel, "ts": ts}
        self.store.put(hold)
        return hold

    # --- the rules of deciding -------------------------------------------------------

    def refusal(self, hold: HoldRecord, actor: Actor, voting: bool = False) -> DecisionError | None:
        """Why ``actor`` may not decide ``hold`` (approve, if ``voting``), or None: the one place."""
        if hold.decision is not None:
            return DecisionError(409, "already_decided", f"flow {hold.id} was already {hold.decision}")
        if actor.name == hold.identity:
            return DecisionError(403, "self_approval", "reviewers cannot decide their own requests")
        if hold.replayed_by is not None and actor.name == hold.replayed_by:
            return DecisionError(403, "replay_self_approval",
                                 "you replayed this request; another reviewer must decide its hold")
        allowed = hold.allowed_groups()
        if allowed is not None and not (allowed & actor.groups):
            return DecisionError(403, "not_an_approver",
                                 f"this hold needs a reviewer in: {', '.join(sorted(allowed))}")
        if voting and any(v.reviewer == actor.name for v in hold.votes):
            return DecisionError(409, "already_approved", "you already approved this flow; another reviewer must")
        return None

    #: Refusals worth an audit event (an attempt to decide what one must not).
    RECORDED_REFUSALS = frozenset({"self_approval", "replay_self_approval", "not_an_approver"})

    def may_decide(self, hold_id: str, actor: Actor) -> tuple[bool, str | None]:
        """Whether ``actor`` may approve or reject now, and if not, why (for the review page)."""
        refused = self.refusal(self.get(hold_id), actor, voting=True)
        if refused is None:
            return True, None
        if refused.code == "already_approved":
            return False, "You already approved; another reviewer must approve too."
        return False, refused.message

    def _check(self, hold: HoldRecord, actor: Actor, voting: bool) -> None:
        refused = self.refusal(hold, actor, voting)
        if refused is None:
            return
        if refused.code in self.RECORDED_REFUSALS:
            self._publish(hold.id, EventKind.DECISION_REFUSED, actor.name, refused=refused.code)
        raise refused

    # --- deciding ----------------------------------------------------------------------

    def approve(self, hold_id: str, actor: Actor, comment: str = "", grant_s: float | None = None,
                via: str | None = None) -> HoldRecord:
        """One reviewer's approval (the last one needed approves). ``via`` names where it
        came from (one of :data:`ORIGINS`), for the audit trail and the recording."""
        _check_origin(via)
        hold = self.get(hold_id)
        self._check(hold, actor, voting=True)
        if grant_s is not None:
            if hold.spec.grant is None:
                raise DecisionError(400, "grant_not_allowed", "this rule does not allow grants")
            unavailable = hold.grant_unavailable()
            if unavailable is not None:
                raise DecisionError(400, "grant_unsafe_method", f"no grant: {unavailable}")
            if grant_s > hold.spec.grant:
                raise DecisionError(400, "grant_too_long",
                                    f"this rule allows grants of at most {format_duration(hold.spec.grant)}")
        hold.votes.append(Vote(actor.name, comment, self.clock()))
        extra = {"via": via} if via else {}
        if len(hold.votes) < hold.spec.approvals_required:
            self.store.put(hold)
            self._publish(hold.id, EventKind.APPROVAL, actor.name, comment=comment,
                          approvals=len(hold.votes), required=hold.spec.approvals_required, **extra)
            return hold
        if grant_s is not None:
            self._grant(hold, actor, grant_s, comment)
        self._finish(hold, "approved", actor.name, comment, via=via)
        return hold

    def reject(self, hold_id: str, actor: Actor, comment: str = "", via: str | None = None) -> HoldRecord:
        """One reviewer's rejection. It needs a comment (the agent reads it) unless the rule
        says ``reject_comment: optional``: checked here, so the review page, the API, the
        terminal and Slack all refuse an empty one alike (``400 comment_required``)."""
        _check_origin(via)
        hold = self.get(hold_id)
        self._check(hold, actor, voting=False)
        if not comment.strip() and hold.spec.reject_comment_required:
            raise DecisionError(400, "comment_required",
                                "A rejection needs a comment: the agent reads it to know what to do instead.")
        self._finish(hold, "rejected", actor.name, comment, via=via)
        return hold

    def escalate(self, hold_id: str) -> bool:
        """Admit the escalation groups (timer). False when decided or already escalated."""
        hold = self.store.get(hold_id)
        if hold is None or hold.decision is not None or hold.escalated:
            return False
        hold.escalated = True
        self.store.put(hold)
        self._publish(hold.id, EventKind.ESCALATED, "gateway", escalate_to=sorted(hold.spec.escalate_to))
        return True

    def expire(self, hold_id: str, detail: str = "timeout") -> bool:
        return self._end(hold_id, "expired", detail)

    def abandon(self, hold_id: str, detail: str = "client disconnected") -> bool:
        return self._end(hold_id, "abandoned", detail)

    def expire_all(self, detail: str) -> None:
        """Every pending hold expires (the gateway stops: nobody can be forwarded any more)."""
        for hold in self.store.pending():
            self._finish(hold, "expired", "gateway", detail=detail)

    def _end(self, hold_id: str, decision: str, detail: str) -> bool:
        hold = self.store.get(hold_id)
        if hold is None or hold.decision is not None:
            return False
        self._finish(hold, decision, "gateway", detail=detail)
        return True

    def _finish(self, hold: HoldRecord, decision: str, actor: str, comment: str = "",
                detail: str | None = None, via: str | None = None) -> None:
        if hold.decision is not None:
            return
        hold.decision = decision
        hold.decided_at = self.clock()
        hold.raw = None  # decided: the bytes are no longer offered for review
        hold.comment = comment
        hold.detail = detail
        hold.decided_via = via
        if decision == "approved":
            hold.decided_by = ", ".join(v.reviewer for v in hold.votes)
        elif decision == "rejected":
            hold.decided_by = actor
        self.store.put(hold)
        extra: dict[str, Any] = {}
        if decision == "approved":
            extra = {"approvers": [v.reviewer for v in hold.votes], "grant": hold.grant_id}
        if detail:
            extra["reason"] = detail
        if via:
            extra["via"] = via
        self._publish(hold.id, EventKind(decision), actor, comment=comment,
                      waited_s=round(hold.decided_at - hold.created, 3), **extra)

    # --- grants ------------------------------------------------------------------------

    def _grant(self, hold: HoldRecord, actor: Actor, seconds: float, comment: str = "") -> None:
        now = self.clock()
        grant = Grant(uuid.uuid4().hex[:12], hold.id, hold.identity, hold.binding, hold.verdict,
                      hold.spec.rule, actor.name, now, now + seconds, body_summary=hold.shown_summary(),
                      body_size=hold.body_size, reason=hold.spec.reason, comment=comment)
        self.store.put_grant(grant)
        hold.grant_id = grant.id

    def _live_grants(self) -> list[Grant]:
        now = self.clock()
        live = []
        for grant in self.store.grants():
            if grant.expires_at <= now:
                self.store.remove_grant(grant.id)
            else:
                live.append(grant)
        return live

    def resend_grant(self, hold_id: str, binding: RequestPrint, seconds: float, uses: int = 1) -> Grant | None:
        """An approved hold whose client gave up: admit ``uses`` identical re-sent calls
        (``binding``: what "identical" means for them, e.g. an MCP call's tool and
        canonical arguments) within ``seconds``, from the same identity, same verdict."""
        hold = self.store.get(hold_id)
        if hold is None or hold.decision != "approved" or hold.collected:
            return None
        now = self.clock()
        grant = Grant(uuid.uuid4().hex[:12], hold.id, hold.identity, binding, hold.verdict,
                      hold.spec.rule, hold.decided_by or "reviewer", now, now + seconds,
                      body_summary=hold.shown_summary(), body_size=hold.body_size,
                      reason=hold.spec.reason, comment="re-send of an approved call", max_uses=uses)
        self.store.put_grant(grant)
        hold.grant_id = hold.grant_id or grant.id
        self.store.put(hold)
        return grant

    def use_grant(self, flow_id: str, identity: str, binding: RequestPrint, verdict: VerdictPrint) -> Grant | None:
        """The grant that lets request ``flow_id`` pass (counted and announced), or None."""
        now = self.clock()
        grant = next((g for g in self._live_grants() if g.covers(identity, binding, verdict, now)), None)
        if grant is None:
            return None
        grant.uses += 1
        grant.used = [*grant.used, {"flow_id": flow_id, "at": now}][-GRANT_USES_KEPT:]
        self.store.put_grant(grant)
        self._publish(flow_id, EventKind.GRANT_USED, grant.created_by, grant=grant.id,
                      granted_on=grant.flow_id, uses=grant.uses)
        return grant

    def revoke(self, grant_id: str, actor: Actor) -> Grant:
        grant = self.store.remove_grant(grant_id)
        if grant is None:
            raise DecisionError(404, "unknown_grant", f"no active grant {grant_id}")
        if self.store.get(grant.flow_id) is not None:
            self._publish(grant.flow_id, EventKind.GRANT_REVOKED, actor.name, grant=grant.id, uses=grant.uses)
        return grant

    # --- collecting (async mode) and forwarding -------------------------------------------

    def collect(self, flow_id: str, hold_id: str, identity: str, binding: RequestPrint,
                verdict: VerdictPrint) -> Collection:
        """An async agent re-sends the held request (as flow ``flow_id``) for the decision.

        It must come from the same identity, be the request the reviewer saw (every bound
        header) and still be decided the same way by the policy; an approval is used once.
        """
        hold = self.store.get(hold_id)
        if hold is None:
            return Collection("unknown")
        if hold.identity != identity:
            differs: str | None = "it was held for another identity"
        else:
            differs = hold.binding.difference(binding) or hold.verdict.difference(verdict)
        if differs is not None:
            self._publish(flow_id, EventKind.APPROVAL_MISMATCH, identity, hold=hold.id, differs=differs)
            return Collection("mismatch", hold, differs)
        if hold.decision is None:
            return Collection("pending", hold)
        if hold.decision == "approved" and not hold.collected:
            self.mark_collected(hold)
            self._publish(flow_id, EventKind.APPROVAL_USED, identity, hold=hold.id)
            return Collection("approved", hold)
        if hold.decision == "approved":
            return Collection("used", hold)
        return Collection("denied", hold)

    def mark_collected(self, hold: HoldRecord) -> None:
        """The approved request is being forwarded: the approval cannot be used again."""
        hold.collected = True
        self.store.put(hold)
