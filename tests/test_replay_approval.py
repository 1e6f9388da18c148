"""A replay cannot be used to overturn another reviewer's rejection (issue 12).

Bob rejected a refund; Alice replayed the flow (a replay runs as the original agent,
so the self-approval check did not see her) and approved her own replay. Now the
reviewer who replayed a flow may not decide the replay's hold, in the API and the UI;
another reviewer must.

A real gateway with recording, its review API and pages (ReviewRig).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.holds.addon import ApprovalsAddon
from addons.holds.book import Actor, DecisionError
from addons.policy.engine import Verdict
from tests.support.approval_pages import LoggedIn
from tests.support.review import ReviewRig

REFUND = {"amount": 900, "order": "R-1"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("replay-approval"), confdir)
    yield rig
    rig.stop()


def test_in_process_the_replaying_reviewer_may_not_decide_the_replays_hold():
    async def scenario():
        states = FlowStates()
        addon = ApprovalsAddon(states, SimpleNamespace(policy=None))
        with taddons.context(addon):
            flow = tflow.tflow()
            state = states.of(flow)
            state.identity, state.replay_of, state.actor = "billing-agent", "original-id", "alice"
            state.control["x-portcullis-wait"] = "async"
            state.verdict = Verdict("hold", None, ())
            await addon.request(flow)
            assert flow.response.status_code == 202
            alice = Actor("alice", frozenset({"finance-leads"}))
            for decide in (addon.book.approve, addon.book.reject):
                with pytest.raises(DecisionError) as refused:
                    decide(flow.id, alice)
                assert refused.value.code == "replay_self_approval"
            assert addon.book.get(flow.id).summary()["replayed_by"] == "alice"
            addon.book.approve(flow.id, Actor("bob", frozenset({"finance-leads"})))
            assert addon.book.get(flow.id).decision == "approved"

    asyncio.run(scenario())


def replay_when_recorded(rig: ReviewRig, original: str, reviewer: str) -> dict:
    """Replay ``original`` as soon as the recorder has committed it."""

    def attempt():
        response = rig.api(reviewer, "POST", f"/api/flows/{original}/replay", json={"wait": 5})
        return response.json() if response.status_code != 404 else None

    return rig.wait_for(attempt, what="the original flow to be recorded")


def test_a_reviewer_cannot_approve_their_own_replay_of_a_rejected_flow(rig: ReviewRig):
    path = "/v1/refunds?t=replay-self"
    call = rig.agent("POST", path, json=REFUND)
    original = rig.wait_held(path)["flow_id"]
    assert rig.reject("bob", original, "not this one").status_code == 200
    assert call.result(timeout=10).status_code == 403

    started = replay_when_recorded(rig, original, "alice")
    assert started["state"] == "held", started
    replay_id = started["flow_id"]
    details = rig.flow(replay_id, "alice")
    assert (details["replay_of"], details["replayed_by"]) == (original, "alice")
    assert details["you_may_decide"] is False and "replayed" in details["why_not"]

    for decide in (rig.approve, rig.reject):
        refused = decide("alice", replay_id, "overriding bob")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "replay_self_approval"
    assert rig.received(path) == []
    refusals = [e for e in rig.flow(replay_id)["events"] if e["kind"] == "decision_refused"]
    assert [(e["actor"], e["detail"]["refused"]) for e in refusals] == [("alice", "replay_self_approval")] * 2

    # The review page says so, and its form refuses too.
    alice = LoggedIn(rig, "alice")
    page = alice.get(f"/flows/{replay_id}")
    assert 'id="cannot-decide"' in page.text and 'id="replay-note"' in page.text
    assert 'id="decide-form"' not in page.text
    bob = LoggedIn(rig, "bob")
    token = bob.csrf(f"/flows/{replay_id}")
    submitted = alice.post(f"/flows/{replay_id}/decide",
                           {"action": "approve", "comment": "", "csrf_token": alice.csrf(f"/flows/{original}")})
    assert submitted.status_code == 403 and "you replayed this request" in submitted.text, submitted.status_code
    assert rig.flow(replay_id)["status"] == "pending"

    # Another finance lead may decide it (here: bob, through the form).
    decided = bob.post(f"/flows/{replay_id}/decide", {"action": "approve", "comment": "", "csrf_token": token})
    assert decided.status_code == 302, decided.text
    done = rig.wait_for(lambda: (s := rig.api("bob", "GET", f"/api/replays/{replay_id}").json())
                        ["state"] == "done" and s, what="the replay to finish")
    assert (done["decision"], done["approved_by"], done["actor"]) == ("approved", "bob", "alice")
    assert len(rig.received(path)) == 1
