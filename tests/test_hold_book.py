"""The hold book's state machine, in process: no proxy, no flows, a fake clock.

Votes and N approvals, rejection, escalation, expiry, grants (scope, expiry, uses,
revocation), single-use collection, who may decide (own request, replay of one's own,
groups), the per-identity pending cap, the events published for each step, and the
store's bounds. Each test builds a fresh book over the in-memory store.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from addons.core.events import Event, EventBus
from addons.core.loopbridge import LoopBridge, LoopBusy, LoopNotRunning
from addons.holds.binding import RequestPrint, VerdictPrint
from addons.holds.book import Actor, DecisionError, HoldBook, HoldRecord
from addons.holds.store import EVENTS_PER_HOLD, MemoryHoldStore
from tests.support.hold_desk import PRINT, VERDICT, hold_record

ROOT = Path(__file__).resolve().parent.parent
FIN1 = Actor("fin1", frozenset({"finance-leads"}))
FIN2 = Actor("fin2", frozenset({"finance-leads"}))
OPS = Actor("ops", frozenset({"security-oncall"}))
SUPPORT = Actor("sam", frozenset({"support"}))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, store: MemoryHoldStore | None = None) -> None:
        self.clock = Clock()
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.subscribe(self.events.append)
        self.book = HoldBook(store, self.bus, self.clock)
        self._n = 0

    def hold(self, identity: str = "billing-agent", binding: RequestPrint = PRINT,
             verdict: VerdictPrint = VERDICT, **spec_fields) -> HoldRecord:
        self._n += 1
        return self.book.hold(hold_record(f"flow-{self._n}", self.clock(), identity, binding, verdict,
                                          **spec_fields))

    def kinds(self, flow_id: str) -> list[str]:
        return [e.kind for e in self.events if e.flow_id == flow_id]


def refused(action, *args) -> DecisionError:
    with pytest.raises(DecisionError) as caught:
        action(*args)
    return caught.value


# --- votes and decisions -------------------------------------------------------------


def test_one_approval_decides_a_default_hold_and_names_the_approver():
    rig = Rig()
    hold = rig.hold()
    assert rig.book.queue()[0]["status"] == "pending"
    rig.clock.now += 12
    rig.book.approve(hold.id, FIN1, "ok")
    assert (hold.decision, hold.decided_by, hold.comment, hold.raw) == ("approved", "fin1", "ok", None)
    assert rig.kinds(hold.id) == ["held", "approved"]
    approved = rig.events[-1]
    assert approved.detail["approvers"] == ["fin1"] and approved.detail["waited_s"] == 12
    assert rig.book.queue() == [] and rig.book.history()[0]["status"] == "approved"


def test_n_approvals_need_n_distinct_reviewers_and_one_rejection_rejects():
    rig = Rig()
    hold = rig.hold(approvals_required=2)
    rig.book.approve(hold.id, FIN1)
    assert hold.decision is None and rig.kinds(hold.id)[-1] == "approval"
    assert rig.events[-1].detail == {"comment": "", "approvals": 1, "required": 2}
    again = refused(rig.book.approve, hold.id, FIN1)
    assert (again.status, again.code) == (409, "already_approved")
    assert rig.book.may_decide(hold.id, FIN1) == (False, "You already approved; another reviewer must approve too.")
    rig.book.approve(hold.id, FIN2)
    assert hold.decision == "approved" and hold.decided_by == "fin1, fin2"

    other = rig.hold(approvals_required=3)
    rig.book.approve(other.id, FIN1)
    rig.book.reject(other.id, FIN2, "no")
    assert (other.decision, other.decided_by, other.comment) == ("rejected", "fin2", "no")


def test_a_decided_hold_cannot_be_decided_again():
    rig = Rig()
    hold = rig.hold()
    rig.book.reject(hold.id, FIN1, "no")
    for action in (rig.book.approve, rig.book.reject):
        error = refused(action, hold.id, FIN2)
        assert (error.status, error.code) == (409, "already_decided")
    assert rig.book.expire(hold.id) is False and rig.book.abandon(hold.id) is False
    assert rig.kinds(hold.id) == ["held", "rejected"]


def test_unknown_holds_and_grants_are_404():
    rig = Rig()
    assert refused(rig.book.approve, "nope", FIN1).code == "unknown_flow"
    assert refused(rig.book.get, "nope").status == 404
    assert refused(rig.book.revoke, "nope", FIN1).code == "unknown_grant"
    assert rig.book.find("nope") is None


# --- who may decide ------------------------------------------------------------------


def test_who_may_decide_own_request_groups_and_replays_and_refusals_are_recorded():
    rig = Rig()
    own = rig.hold(identity="fin1")
    error = refused(rig.book.approve, own.id, FIN1)
    assert (error.status, error.code) == (403, "self_approval")
    assert refused(rig.book.reject, own.id, FIN1).code == "self_approval"

    wrong_group = rig.hold()
    assert refused(rig.book.approve, wrong_group.id, SUPPORT).code == "not_an_approver"
    assert rig.book.may_decide(wrong_group.id, SUPPORT) == (False, "this hold needs a reviewer in: finance-leads")

    replay = rig.hold()
    replay.replayed_by = "fin1"
    assert refused(rig.book.approve, replay.id, FIN1).code == "replay_self_approval"
    allowed, why = rig.book.may_decide(replay.id, FIN1)
    assert not allowed and "replayed" in why
    rig.book.approve(replay.id, FIN2)
    assert replay.decision == "approved"

    refusals = [(e.flow_id, e.actor, e.detail["refused"]) for e in rig.events if e.kind == "decision_refused"]
    assert refusals == [(own.id, "fin1", "self_approval"), (own.id, "fin1", "self_approval"),
                        (wrong_group.id, "sam", "not_an_approver"), (replay.id, "fin1", "replay_self_approval")]
    assert own.decision is None and wrong_group.decision is None
    # Asking (the review page) records nothing.
    rig.book.may_decide(own.id, FIN1)
    assert sum(e.kind == "decision_refused" for e in rig.events) == 4


def test_any_reviewer_may_decide_a_hold_without_approvers():
    rig = Rig()
    hold = rig.hold(approvers=None)
    assert rig.book.may_decide(hold.id, SUPPORT) == (True, None)
    rig.book.approve(hold.id, SUPPORT)
    assert hold.decision == "approved"


def test_escalation_admits_the_escalation_groups_once():
    rig = Rig()
    hold = rig.hold(escalate_after=60.0, escalate_to=frozenset({"security-oncall"}))
    assert hold.escalate_after == 60.0
    assert refused(rig.book.approve, hold.id, OPS).code == "not_an_approver"
    assert rig.book.escalate(hold.id) is True
    assert rig.book.escalate(hold.id) is False  # once
    assert rig.events[-1].detail == {"escalate_to": ["security-oncall"]}
    assert hold.summary()["escalated"] is True
    rig.book.approve(hold.id, OPS)
    assert hold.decision == "approved"
    assert rig.kinds(hold.id).count("escalated") == 1
    assert rig.book.escalate(hold.id) is False  # decided
    # An escalation due after the timeout never happens.
    assert rig.hold(escalate_after=600.0, timeout=300.0).escalate_after is None


# --- expiry and the end of a hold ------------------------------------------------------


def test_expiry_abandonment_and_shutdown():
    rig = Rig()
    first, second, third = rig.hold(), rig.hold(), rig.hold()
    rig.clock.now += 300
    assert rig.book.expire(first.id) is True
    assert (first.decision, first.detail, first.decided_by) == ("expired", "timeout", None)
    assert rig.events[-1].detail == {"comment": "", "waited_s": 300.0, "reason": "timeout"}
    assert rig.book.abandon(second.id) is True and second.decision == "abandoned"
    rig.book.expire_all("gateway_shutdown")
    assert (third.decision, third.detail) == ("expired", "gateway_shutdown")
    assert rig.book.pending() == [] and refused(rig.book.approve, third.id, FIN1).code == "already_decided"


def test_the_queue_is_most_urgent_first_and_summaries_count_down():
    rig = Rig()
    slow = rig.hold(timeout=600.0)
    fast = rig.hold(timeout=60.0)
    rig.clock.now += 10
    queue = rig.book.queue()
    assert [h["flow_id"] for h in queue] == [fast.id, slow.id]
    assert (queue[0]["age_s"], queue[0]["time_left_s"]) == (10.0, 50.0)


def test_the_per_identity_pending_cap():
    rig = Rig()
    for _ in range(3):
        rig.hold(identity="agent-a")
    rig.hold(identity="agent-b")
    assert rig.book.pending_at_cap("agent-a", 3) == 3
    assert rig.book.pending_at_cap("agent-a", 4) is None
    assert rig.book.pending_at_cap("agent-b", 3) is None
    rig.book.approve(rig.book.pending()[0].id, FIN1)  # a decided hold frees a place
    assert rig.book.pending_at_cap("agent-a", 3) is None


# --- grants --------------------------------------------------------------------------


def test_a_grant_covers_the_same_identity_print_and_verdict_until_it_expires():
    rig = Rig()
    hold = rig.hold(grant=900.0)
    rig.book.approve(hold.id, FIN1, "", 600.0)
    [grant] = rig.book.active_grants()
    assert (grant["flow_id"], grant["created_by"], grant["expires_at"] - grant["created_at"]) == (hold.id, "fin1", 600)
    assert hold.grant_id == grant["id"] and rig.events[-1].detail["grant"] == grant["id"]

    other_url = RequestPrint("POST", "https://api.example/v1/refunds?all=1", PRINT.body_sha256, PRINT.headers)
    stricter = VerdictPrint("hold", "refunds", ("refunds", "freeze"), ("cfo",), 1, ())
    assert rig.book.use_grant("f-a", "other-agent", PRINT, VERDICT) is None
    assert rig.book.use_grant("f-b", "billing-agent", other_url, VERDICT) is None
    assert rig.book.use_grant("f-c", "billing-agent", PRINT, stricter) is None
    used = rig.book.use_grant("f-d", "billing-agent", PRINT, VERDICT)
    assert used is not None and used.uses == 1
    assert rig.kinds("f-d") == ["grant_used"] and rig.events[-1].actor == "fin1"
    assert rig.events[-1].detail == {"grant": grant["id"], "granted_on": hold.id, "uses": 1}
    assert rig.book.use_grant("f-e", "billing-agent", PRINT, VERDICT).uses == 2

    rig.clock.now += 600
    assert rig.book.use_grant("f-f", "billing-agent", PRINT, VERDICT) is None
    assert rig.book.active_grants() == []


def test_grants_need_a_rule_that_allows_them_and_stay_within_its_limit():
    rig = Rig()
    no_grants = rig.hold()
    assert refused(rig.book.approve, no_grants.id, FIN1, "", 60.0).code == "grant_not_allowed"
    limited = rig.hold(grant=900.0)
    error = refused(rig.book.approve, limited.id, FIN1, "", 3600.0)
    assert (error.status, error.code, error.message) == (400, "grant_too_long",
                                                         "this rule allows grants of at most 15m")
    assert no_grants.votes == [] and limited.votes == []  # refused before the vote counts


GET_PRINT = RequestPrint("GET", "https://api.example/v1/reports/daily", "e3" * 32, ())


@pytest.mark.parametrize("method, unsafe, offered", [
    ("POST", False, False), ("PATCH", False, False), ("POST", True, True),
    ("GET", False, True), ("PUT", False, True), ("DELETE", False, True),
])
def test_grants_for_non_idempotent_methods_need_the_rules_grant_unsafe_methods(method, unsafe, offered):
    rig = Rig()
    binding = RequestPrint(method, PRINT.url, PRINT.body_sha256, PRINT.headers)
    hold = rig.hold(binding=binding, grant=900.0, grant_unsafe_methods=unsafe)
    summary = hold.summary()
    assert summary["max_grant_s"] == (900.0 if offered else None)
    if offered:
        assert summary["grant_unavailable"] is None
        rig.book.approve(hold.id, FIN1, "", 600.0)
        assert hold.grant_id is not None
        return
    assert summary["grant_unavailable"].startswith(f"{method} is not idempotent")
    error = refused(rig.book.approve, hold.id, FIN1, "", 600.0)
    assert (error.status, error.code) == (400, "grant_unsafe_method")
    assert hold.votes == [] and rig.book.active_grants() == []  # refused before the vote counts
    rig.book.approve(hold.id, FIN1, "plain approval still works")
    assert hold.decision == "approved" and hold.grant_id is None


def test_a_rule_without_grant_offers_none_whatever_the_method():
    rig = Rig()
    hold = rig.hold(binding=GET_PRINT, grant=None, grant_unsafe_methods=True)
    assert (hold.summary()["max_grant_s"], hold.summary()["grant_unavailable"]) == (None, "the rule allows no grants")


def test_a_grant_keeps_its_full_scope_and_each_use():
    rig = Rig()
    hold = rig.hold(binding=GET_PRINT, body=b'{"amount": 250, "currency": "EUR", "lines": [1, 2]}', grant=900.0)
    rig.book.approve(hold.id, FIN1, "daily report is fine", 600.0)
    granted_at = rig.clock.now
    rig.clock.now += 5
    rig.book.use_grant("use-1", "billing-agent", GET_PRINT, VERDICT)
    rig.clock.now += 5
    rig.book.use_grant("use-2", "billing-agent", GET_PRINT, VERDICT)
    [grant] = rig.book.active_grants()
    assert grant == rig.book.grant(hold.grant_id)
    assert {k: grant[k] for k in ("identity", "method", "url", "body_sha256", "body_summary", "body_size",
                                  "rule", "reason", "comment", "created_by", "bound_headers")} == {
        "identity": "billing-agent", "method": "GET", "url": GET_PRINT.url, "body_sha256": "e3" * 32,
        "body_summary": 'amount=250, currency="EUR", lines=[2 items]', "body_size": 51, "rule": "refunds",
        "reason": "Refunds need a finance lead", "comment": "daily report is fine", "created_by": "fin1",
        "bound_headers": []}
    assert grant["expires_at"] == granted_at + 600 and grant["uses"] == 2
    assert grant["used"] == [{"flow_id": "use-1", "at": granted_at + 5}, {"flow_id": "use-2", "at": granted_at + 10}]
    rig.book.revoke(hold.grant_id, FIN2)
    assert rig.book.grant(hold.grant_id) is None


def test_a_grant_remembers_its_last_uses_only():
    from addons.holds.book import GRANT_USES_KEPT
    rig = Rig()
    hold = rig.hold(binding=GET_PRINT, grant=900.0)
    rig.book.approve(hold.id, FIN1, "", 600.0)
    for n in range(GRANT_USES_KEPT + 5):
        rig.book.use_grant(f"u-{n}", "billing-agent", GET_PRINT, VERDICT)
    grant = rig.book.grant(hold.grant_id)
    assert grant["uses"] == GRANT_USES_KEPT + 5 and len(grant["used"]) == GRANT_USES_KEPT
    assert grant["used"][-1]["flow_id"] == f"u-{GRANT_USES_KEPT + 4}" and grant["used"][0]["flow_id"] == "u-5"


def test_auto_summary_is_one_short_line():
    from addons.holds.book import SUMMARY_MAX, auto_summary
    assert auto_summary('{"order": "o-9", "amount": 250, "meta": {"a": 1}}') == 'order="o-9", amount=250, meta={…}'
    assert auto_summary("[1, 2, 3]") == "[3 items]"
    assert auto_summary("plain text\nsecond line") == "plain text"
    assert auto_summary("   ") is None
    assert auto_summary('{"to": "evil\u202etxt.exe"}') == 'to="evil\\u202etxt.exe"'
    assert auto_summary("bell\x07 here") == "bell\\u0007 here"
    long = auto_summary('{"note": "' + "x" * 500 + '"}')
    assert len(long) == SUMMARY_MAX and long.endswith("…")


def test_decisions_name_where_they_came_from():
    rig = Rig()
    first, second = rig.hold(), rig.hold(approvals_required=2)
    rig.book.reject(first.id, FIN1, "no", via="slack")
    assert rig.events[-1].detail["via"] == "slack"
    rig.book.approve(second.id, FIN1, "", via="cli")
    assert (rig.events[-1].kind, rig.events[-1].detail["via"]) == ("approval", "cli")
    rig.book.approve(second.id, FIN2, "")
    assert rig.events[-1].kind == "approved" and "via" not in rig.events[-1].detail
    third = rig.hold()
    with pytest.raises(ValueError, match="unknown decision origin"):
        rig.book.approve(third.id, FIN1, "", via="slack-ish")  # only the four origins exist
    assert rig.book.get(third.id).decision is None and rig.book.get(third.id).votes == []


def test_a_rejection_needs_a_comment_unless_the_rule_says_optional():
    """The one place (every path decides through the book): nothing is decided or recorded."""
    rig = Rig()
    hold = rig.hold()
    for empty in ("", "  \n "):
        error = refused(rig.book.reject, hold.id, FIN1, empty)
        assert (error.status, error.code) == (400, "comment_required")
        assert "A rejection needs a comment" in error.message
    assert rig.book.get(hold.id).decision is None and rig.kinds(hold.id) == ["held"]
    assert refused(rig.book.reject, hold.id, SUPPORT, "").code == "not_an_approver"  # who may decide: first
    assert rig.book.reject(hold.id, FIN1, "not this customer").decision == "rejected"
    lenient = rig.hold(reject_comment_required=False)
    assert rig.book.reject(lenient.id, FIN1, "").decision == "rejected"


def test_a_grant_is_made_only_when_the_last_approval_decides():
    rig = Rig()
    hold = rig.hold(grant=900.0, approvals_required=2)
    rig.book.approve(hold.id, FIN1, "", 600.0)
    assert rig.book.active_grants() == []
    rig.book.approve(hold.id, FIN2, "", 300.0)
    assert [g["created_by"] for g in rig.book.active_grants()] == ["fin2"]


def test_a_revoked_grant_covers_nothing_and_the_revocation_is_recorded():
    rig = Rig()
    hold = rig.hold(grant=900.0)
    rig.book.approve(hold.id, FIN1, "", 600.0)
    grant_id = hold.grant_id
    rig.book.use_grant("f-1", "billing-agent", PRINT, VERDICT)
    revoked = rig.book.revoke(grant_id, FIN2)
    assert revoked.uses == 1
    assert rig.events[-1].kind == "grant_revoked" and rig.events[-1].flow_id == hold.id
    assert rig.events[-1].detail == {"grant": grant_id, "uses": 1}
    assert rig.book.use_grant("f-2", "billing-agent", PRINT, VERDICT) is None
    assert refused(rig.book.revoke, grant_id, FIN2).code == "unknown_grant"


# --- collecting (async mode) -----------------------------------------------------------


def test_an_approval_is_collected_once_by_the_identical_request_of_the_same_identity():
    rig = Rig()
    hold = rig.hold()
    assert rig.book.collect("c-0", hold.id, "billing-agent", PRINT, VERDICT).outcome == "pending"
    rig.book.approve(hold.id, FIN1)
    other_body = RequestPrint(PRINT.method, PRINT.url, "ef" * 32, PRINT.headers)
    for flow_id, identity, binding, verdict, differs in (
        ("c-1", "someone-else", PRINT, VERDICT, "it was held for another identity"),
        ("c-2", "billing-agent", other_body, VERDICT, "the body differs from the approved one"),
        ("c-3", "billing-agent", PRINT, VerdictPrint("hold", "refunds", ("refunds",), ("cfo",), 1, ()),
         "the rules now ask for other approvers than those who approved"),
    ):
        collected = rig.book.collect(flow_id, hold.id, identity, binding, verdict)
        assert (collected.outcome, collected.differs) == ("mismatch", differs)
        assert rig.kinds(flow_id) == ["approval_mismatch"]
    assert not hold.collected
    assert rig.book.collect("c-4", hold.id, "billing-agent", PRINT, VERDICT).outcome == "approved"
    assert hold.collected and rig.kinds("c-4") == ["approval_used"]
    assert rig.book.collect("c-5", hold.id, "billing-agent", PRINT, VERDICT).outcome == "used"
    assert rig.book.collect("c-6", "no-such-hold", "billing-agent", PRINT, VERDICT).outcome == "unknown"


def test_a_rejected_or_expired_hold_is_denied_to_its_collector():
    rig = Rig()
    rejected, expired = rig.hold(), rig.hold()
    rig.book.reject(rejected.id, FIN1, "no")
    rig.book.expire(expired.id)
    for hold in (rejected, expired):
        assert rig.book.collect("c", hold.id, "billing-agent", PRINT, VERDICT).outcome == "denied"


# --- events and the store ----------------------------------------------------------------


def test_each_hold_keeps_its_events_bounded_and_only_its_own():
    rig = Rig()
    hold = rig.hold()
    for i in range(EVENTS_PER_HOLD + 10):
        rig.bus.publish(Event(hold.id, "forwarded", rig.clock(), "gateway", {"i": i}))
    rig.bus.publish(Event("unrelated", "forwarded", rig.clock(), "gateway", {}))
    kept = rig.book.events_of(hold.id)
    assert len(kept) == EVENTS_PER_HOLD and kept[0]["kind"] == "held"
    assert rig.book.store.events("unrelated") == []


def test_the_store_forgets_the_oldest_decided_holds_never_pending_ones():
    rig = Rig(MemoryHoldStore(history_max=3))
    pending = rig.hold()
    decided = []
    for _ in range(4):
        hold = rig.hold()
        rig.book.reject(hold.id, FIN1, "no")
        decided.append(hold)
    assert rig.book.find(pending.id) is pending
    assert [rig.book.find(h.id) is not None for h in decided] == [False, False, True, True]


def test_the_hold_book_loads_no_proxy():
    code = ("import sys; import addons.holds.book, addons.holds.store, addons.holds.desk, "
            "addons.core.loopbridge; assert 'mitmproxy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --- the loop bridge the desk crosses threads with ------------------------------------------


def test_the_loop_bridge_runs_calls_on_the_loop_and_gives_up_on_a_busy_one():
    bridge = LoopBridge()
    with pytest.raises(LoopNotRunning):
        bridge.call(lambda: None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        bridge.attach(loop)
        assert bridge.call(threading.current_thread) is thread
        with pytest.raises(ZeroDivisionError):
            bridge.call(lambda: 1 / 0)
        ran: list[str] = []
        loop.call_soon_threadsafe(time.sleep, 0.3)  # the loop is busy
        with pytest.raises(LoopBusy):
            bridge.call(ran.append, "late", timeout=0.05)
        assert bridge.call(ran.append, "next") is None
        assert ran == ["next"]  # the abandoned call never ran behind its caller's back
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    with pytest.raises(LoopNotRunning):
        bridge.call(lambda: None)


# --- the backend seam ----------------------------------------------------------------------


class CopyingStore(MemoryHoldStore):
    """Hands out copies, as a database would: a change the book does not ``put`` is lost."""

    def get(self, hold_id):
        return copy.deepcopy(super().get(hold_id))

    def pending(self):
        return copy.deepcopy(super().pending())

    def decided(self, limit):
        return copy.deepcopy(super().decided(limit))

    def get_grant(self, grant_id):
        return copy.deepcopy(super().get_grant(grant_id))

    def grants(self):
        return copy.deepcopy(super().grants())


def test_the_book_writes_every_change_back_to_a_store_that_hands_out_copies():
    rig = Rig(CopyingStore())
    two = rig.hold(approvals_required=2, grant=900.0, escalate_after=60.0,
                   escalate_to=frozenset({"security-oncall"}))
    rig.book.approve(two.id, FIN1)
    assert [v.reviewer for v in rig.book.get(two.id).votes] == ["fin1"]
    assert rig.book.escalate(two.id) and rig.book.get(two.id).escalated
    rig.book.approve(two.id, OPS, "", 600.0)
    stored = rig.book.get(two.id)
    assert (stored.decision, stored.decided_by, stored.raw) == ("approved", "fin1, ops", None)
    assert stored.grant_id is not None
    rig.book.use_grant("f-1", "billing-agent", PRINT, VERDICT)
    assert rig.book.use_grant("f-2", "billing-agent", PRINT, VERDICT).uses == 2
    assert rig.book.active_grants()[0]["uses"] == 2
    assert rig.book.collect("c-1", two.id, "billing-agent", PRINT, VERDICT).outcome == "approved"
    assert rig.book.collect("c-2", two.id, "billing-agent", PRINT, VERDICT).outcome == "used"
    assert [e["kind"] for e in rig.book.events_of(two.id)] == ["held", "approval", "escalated", "approved"]
