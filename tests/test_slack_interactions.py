"""Decisions from Slack, against a local fake Slack on 127.0.0.1 and a real gateway.

The gateway posts each hold as a Block Kit message with Approve/Reject buttons
(chat.postMessage to the fake), and rewrites it on every change (chat.update). The fake
presses the buttons as Slack would: a ``block_actions`` payload, form-encoded, signed
with the v0 scheme, POSTed to the review UI's ``/slack/interactions``. Correctly signed
clicks from mapped reviewers decide under the same rules as the UI; wrongly signed,
stale, tampered or replayed ones decide nothing.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from review_ui.reviewers import dump_reviewers, parse_reviewers
from review_ui.slack.signing import REPLAY_WINDOW_S, SeenSignatures, refusal, signature
from tests.support.fake_slack import FakeSlack, Message, sign
from tests.support.review import ReviewRig

BOT_TOKEN = "xoxb-test-0123456789-portcullis"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5-test"
SLACK_USERS = {"alice": "U0ALICE", "bob": "U0BOB", "carol": "U0CAROL", "dave": "U0DAVE"}
REFUND = {"amount": 250, "order": "A-7"}
PING = "<!channel>"


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(BOT_TOKEN, SIGNING_SECRET).start()
    yield fake
    fake.stop()


def link_slack_users(reviewers_file: Path) -> None:
    reviewers = parse_reviewers(reviewers_file.read_text())
    linked = {name: replace(r, slack_user=SLACK_USERS[name]) for name, r in reviewers.items()}
    reviewers_file.write_text(dump_reviewers(linked))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir, slack: FakeSlack) -> Iterator[ReviewRig]:
    settings = """
# (column 0 keeps the rule in the rig's rules list)
  - name: notes
    match: {method: POST, path: /v1/notes}
    action: hold
    reason: "Notes are reviewed"
    reject_comment: optional
""" + textwrap.dedent(f"""
        slack:
          channel: {slack.channel}
          bot_token: ${{env:TEST_SLACK_BOT_TOKEN}}
          signing_secret: ${{env:TEST_SLACK_SIGNING_SECRET}}
          api_url: {slack.api_url}
    """)
    rig = ReviewRig(tmp_path_factory.mktemp("slack-decide"), confdir, extra_rules=settings,
                    env={"TEST_SLACK_BOT_TOKEN": BOT_TOKEN, "TEST_SLACK_SIGNING_SECRET": SIGNING_SECRET})
    link_slack_users(rig.reviewers_file)
    yield rig
    rig.stop()


def request_url(rig: ReviewRig) -> str:
    return rig.ui_url + "/slack/interactions"


def held_message(rig: ReviewRig, slack: FakeSlack, path: str, identity: str = "billing-agent",
                 **kwargs) -> tuple[object, dict, Message]:
    call = rig.agent("POST", path, identity, json=kwargs.pop("json", REFUND), **kwargs)
    hold = rig.wait_held(path)
    return call, hold, slack.message_for(hold["flow_id"])


def click(rig: ReviewRig, slack: FakeSlack, message: Message, who: str, action: str = "portcullis_approve", **kw):
    return slack.click(request_url(rig), message, action, SLACK_USERS.get(who, who), **kw)


def updated(slack: FakeSlack, message: Message, text: str) -> str:
    return slack.wait_for(lambda: text in message.status and message.status, what=f"message status {text!r}")


# --- the signature, unit by unit -----------------------------------------------------------


def test_the_signature_is_slacks_documented_v0_hmac():
    # The example of https://api.slack.com/authentication/verifying-requests-from-slack
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
            b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
            b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
            b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert signature("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body) == expected
    assert refusal("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", expected, body, 1531420618 + 299) is None
    assert "minutes old" in refusal("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", expected, body,
                                    1531420618 + REPLAY_WINDOW_S + 1)
    assert "minutes old" in refusal("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", expected, body,
                                    1531420618 - REPLAY_WINDOW_S - 1)
    assert refusal("another-secret", "1531420618", expected, body, 1531420618) == "the signature does not match"
    assert refusal("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", expected, body + b"&x=1", 1531420618)
    assert refusal("s", None, expected, body, 0).startswith("missing")
    assert refusal("s", "12e3", expected, body, 0) == "X-Slack-Request-Timestamp is not a Unix time"
    seen = SeenSignatures()
    assert seen.first(expected, 100.0) and not seen.first(expected, 200.0)
    assert seen.first(expected, 100.0 + 2 * REPLAY_WINDOW_S + 1)  # forgotten after the window


# --- through the gateway ----------------------------------------------------------------------


def test_a_hold_is_posted_with_its_evidence_and_buttons_and_a_signed_approve_decides(rig, slack):
    path = "/v1/refunds?t=slack-approve"
    call, hold, message = held_message(rig, slack, path, headers={"X-Portcullis-Justification": f"twice {PING}"})
    assert message.channel == slack.channel
    text = message.all_text()
    for shown in ("Refunds over $100 need a finance lead", "refunds", "billing-agent", "finance-leads",
                  "twice &lt;!channel&gt;", "amount=250, order=\\\"A-7\\\"", "0 of 1", "Waiting for a decision"):
        assert shown in text, shown
    assert PING not in text
    approve, reject = message.button("portcullis_approve"), message.button("portcullis_reject")
    assert (approve["value"], approve["style"], reject["value"], reject["style"]) == (
        hold["flow_id"], "primary", hold["flow_id"], "danger")
    assert approve["confirm"]["confirm"]["text"] == "Approve" and reject["confirm"]["title"]["text"] == "Reject this request?"
    assert message.button("portcullis_open")["url"] == f"{rig.ui_url}/flows/{hold['flow_id']}"
    assert not call.done() and rig.received(path) == []

    answer = click(rig, slack, message, "bob")
    assert answer.status_code == 200, rig.gateway.output[-3000:]
    assert answer.json() == {"ok": True, "status": "approved", "reviewer": "bob"}
    assert call.result(timeout=10).status_code == 200 and len(rig.received(path)) == 1
    status = updated(slack, message, "Approved")
    assert "by bob" in status and "forwarded" in status
    assert message.button("portcullis_approve") is None and message.button("portcullis_reject") is None
    approved = next(e for e in rig.flow(hold["flow_id"])["events"] if e["kind"] == "approved")
    assert (approved["actor"], approved["detail"]["via"]) == ("bob", "slack")


def test_wrongly_signed_stale_tampered_and_replayed_clicks_decide_nothing(rig, slack):
    path = "/v1/payouts?t=slack-forged"
    call, hold, message = held_message(rig, slack, path, json={"amount": 9000})
    now = int(time.time())
    forged = {
        "wrong secret": {"secret": "not-the-signing-secret"},
        "too old": {"timestamp": now - REPLAY_WINDOW_S - 5},
        "from the future": {"timestamp": now + REPLAY_WINDOW_S + 5},
        "tampered body": {"tamper": True},
        "empty signature": {"signature": "v0="},
        "garbage signature": {"signature": "v0=" + "0" * 64},
        "v1 scheme": {"signature": sign(SIGNING_SECRET, str(now), b"x").replace("v0=", "v1=")},
    }
    for what, forgery in forged.items():
        answer = click(rig, slack, message, "alice", **forgery)
        assert answer.status_code == 401, what
        assert answer.json()["error"] == "bad_slack_signature", what
    assert rig.flow(hold["flow_id"])["approvals"] == []

    good = click(rig, slack, message, "alice")
    assert good.json() == {"ok": True, "status": "pending", "reviewer": "alice"}
    replayed = click(rig, slack, message, "alice", replay_of=good.sent)
    assert (replayed.status_code, replayed.json()["error"]) == (401, "slack_replay")
    assert [a["reviewer"] for a in rig.flow(hold["flow_id"])["approvals"]] == ["alice"]
    assert not call.done() and rig.received(path) == []
    assert SIGNING_SECRET not in rig.gateway.output and BOT_TOKEN not in rig.gateway.output
    rig.reject("bob", hold["flow_id"], "test over")
    assert call.result(timeout=10).status_code == 403


def test_the_same_rules_apply_groups_self_approval_n_approvals_and_expiry(rig, slack):
    # A Slack member who is no reviewer.
    call, hold, message = held_message(rig, slack, "/v1/refunds?t=slack-rules")
    stranger = click(rig, slack, message, "U0STRANGER")
    assert stranger.json() == {"ok": False, "error": "unknown_slack_user"}
    assert "not linked to a Portcullis reviewer" in slack.wait_for(
        lambda: [e["text"] for e in slack.ephemeral if "not linked" in e["text"]], what="ephemeral")[0]
    # A reviewer outside the rule's groups.
    outsider = click(rig, slack, message, "dave")
    assert outsider.json() == {"ok": False, "error": "not_an_approver"}
    assert slack.wait_for(lambda: [e for e in slack.ephemeral if "finance-leads" in e["text"]], what="why not")
    assert all(e["response_type"] == "ephemeral" and e["replace_original"] is False for e in slack.ephemeral)
    assert rig.flow(hold["flow_id"])["status"] == "pending"
    rig.reject("bob", hold["flow_id"], "done")
    call.result(timeout=10)

    # No self-approval: alice's own agent request.
    own_call, own, own_message = held_message(rig, slack, "/v1/refunds?t=slack-self", identity="alice")
    assert click(rig, slack, own_message, "alice").json() == {"ok": False, "error": "self_approval"}
    rig.reject("bob", own["flow_id"], "done")
    own_call.result(timeout=10)

    # N approvals: the message shows each vote, and the same reviewer counts once.
    two_call, two, two_message = held_message(rig, slack, "/v1/payouts?t=slack-two", json={"amount": 9000})
    assert click(rig, slack, two_message, "alice").json()["status"] == "pending"
    slack.wait_for(lambda: "1 of 2 (alice)" in two_message.all_text(), what="vote shown")
    assert two_message.button("portcullis_approve") is not None
    assert click(rig, slack, two_message, "alice").json() == {"ok": False, "error": "already_approved"}
    assert click(rig, slack, two_message, "bob").json()["status"] == "approved"
    assert "by alice, bob" in updated(slack, two_message, "Approved")
    assert two_call.result(timeout=10).status_code == 200

    # Expiry: the message says so, and a late click decides nothing.
    late_call, late, late_message = held_message(rig, slack, "/v1/quick?t=slack-late")
    assert late_call.result(timeout=10).json()["error"] == "approval_expired"
    assert "nobody decided in time" in updated(slack, late_message, "Expired")
    stale = Message(late_message.channel, late_message.ts, late_message.text, late_message.versions[0])
    assert stale.button("portcullis_approve") is not None  # a client that has not refreshed yet
    assert click(rig, slack, stale, "carol").json() == {"ok": False, "error": "already_decided"}


def test_reject_asks_for_the_comment_the_agent_reads_and_the_modal_decides(rig, slack):
    call, hold, message = held_message(rig, slack, "/v1/refunds?t=slack-reject")
    asked = click(rig, slack, message, "bob", "portcullis_reject")
    assert asked.json() == {"ok": True, "status": "asking_for_a_comment", "reviewer": "bob"}
    trigger = slack.view_for(hold["flow_id"])
    view = slack.views[trigger]
    assert view["callback_id"] == "portcullis_reject_comment" and view["submit"]["text"] == "Reject"
    assert rig.flow(hold["flow_id"])["status"] == "pending"  # nothing decided by the click alone

    empty = slack.submit(request_url(rig), trigger, SLACK_USERS["bob"], "  ")
    assert empty.json()["response_action"] == "errors" and "needs a comment" in empty.json()["errors"]["reason"]
    assert empty.json()["errors"]["reason"].startswith("A rejection needs a comment")  # the book's answer
    forged = slack.submit(request_url(rig), trigger, SLACK_USERS["bob"], "x", secret="wrong")
    assert forged.status_code == 401 and rig.flow(hold["flow_id"])["status"] == "pending"
    outsider = slack.submit(request_url(rig), trigger, SLACK_USERS["dave"], "not mine to decide")
    assert "finance-leads" in outsider.json()["errors"]["reason"]
    done = slack.submit(request_url(rig), trigger, SLACK_USERS["bob"], "duplicate of <!here> A-6")
    assert done.json() == {"response_action": "clear"}
    response = call.result(timeout=10)
    assert response.status_code == 403 and response.json()["comment"] == "duplicate of <!here> A-6"
    status = updated(slack, message, "Rejected")
    assert "by bob" in status and "duplicate of &lt;!here&gt; A-6" in status
    rejected = next(e for e in rig.flow(hold["flow_id"])["events"] if e["kind"] == "rejected")
    assert (rejected["actor"], rejected["detail"]["via"]) == ("bob", "slack")
    # The reject button of an outsider never even asks.
    other_call, other, other_message = held_message(rig, slack, "/v1/refunds?t=slack-reject-outsider")
    assert click(rig, slack, other_message, "dave", "portcullis_reject").json()["error"] == "may_not_decide"
    rig.reject("alice", other["flow_id"], "done")
    other_call.result(timeout=10)


def test_a_decision_made_elsewhere_rewrites_the_slack_message(rig, slack):
    call, hold, message = held_message(rig, slack, "/v1/refunds?t=slack-elsewhere")
    assert rig.reject("alice", hold["flow_id"], "looks like <!here> fraud").status_code == 200
    status = updated(slack, message, "Rejected")
    assert "by alice" in status and "&lt;!here&gt;" in status and "<!here>" not in status
    assert message.button("portcullis_reject") is None
    assert len(message.versions) >= 2
    assert call.result(timeout=10).status_code == 403


def test_a_gateway_without_slack_settings_refuses_the_endpoint(tmp_path):
    from review_ui import close_app, create_app
    from review_ui.reviewers import ReviewerStore
    from tests.support.hold_desk import shared_desk

    app = create_app(shared_desk(), ReviewerStore(None))
    try:
        answer = app.test_client().post("/slack/interactions", data=b"payload=%7B%7D")
        assert (answer.status_code, answer.json["error"]) == (404, "slack_not_configured")
    finally:
        close_app(app)


def test_where_the_rule_makes_the_comment_optional_the_modal_may_be_left_empty(rig, slack):
    call, hold, message = held_message(rig, slack, "/v1/notes?t=slack-optional", json={"text": "hi"})
    assert click(rig, slack, message, "dave", "portcullis_reject").json()["status"] == "asking_for_a_comment"
    trigger = slack.view_for(hold["flow_id"])
    field = slack.views[trigger]["blocks"][1]
    assert field["optional"] is True and "min_length" not in field["element"]
    assert slack.submit(request_url(rig), trigger, SLACK_USERS["dave"], None).json() == {"response_action": "clear"}
    assert call.result(timeout=10).status_code == 403


def test_last_a_stopping_gateway_says_so_in_the_messages_of_its_pending_holds(rig, slack):
    """Stops the module's gateway: keep this test last in the module."""
    path = "/v1/refunds?t=slack-shutdown"
    pending = rig.call("POST", path, json=REFUND, headers={"X-Portcullis-Wait": "async"})
    assert pending.status_code == 202
    message = slack.message_for(pending.json()["flow_id"])
    assert "Waiting for a decision" in message.status
    rig.gateway.stop()
    status = updated(slack, message, "Expired")
    assert "the gateway stopped" in status and message.button("portcullis_approve") is None
