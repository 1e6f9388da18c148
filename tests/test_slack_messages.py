"""Where a hold's Slack message is, kept on its record; the two races of shared state.

In process: a real hold book on a running loop (tests.support.hold_desk), the real
notifier and Slack poster, the local fake Slack. The message's (channel, ts) lands on
the hold record once posted. If the hold changed while the post was on its way, the
poster rewrites it at once; if another gateway decided before this one's note of the
message reached PostgreSQL (the record it decided on had no message), this gateway,
which posted it, rewrites it when it learns of the decision. (The two-gateway path
itself: tests/test_slack_cluster.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from addons.core.events import Event, EventKind
from addons.credentials.secretrefs import Resolved
from addons.holds.book import Actor
from addons.holds.notify import NotifyAddon, SlackPoster
from addons.holds.spec import SlackSettings
from tests.support.fake_slack import FakeSlack
from tests.support.hold_desk import hold_record, running_desk

BOT_TOKEN = "xoxb-test-messages-0123456789"
FIN = Actor("fin", frozenset({"finance-leads"}))


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(BOT_TOKEN, "signing-secret-messages").start()
    yield fake
    fake.stop()


def settings(slack: FakeSlack) -> SlackSettings:
    return SlackSettings(slack.channel, Resolved(BOT_TOKEN), Resolved("signing-secret-messages"), slack.api_url)


def test_a_hold_decided_while_its_post_was_on_the_way_is_rewritten_at_once(slack: FakeSlack):
    with running_desk() as desk:
        desk.bridge.call(desk.book.hold, hold_record("race-post", time.time()))
        posted_state = desk.find("race-post")  # what the "held" event queued: pending
        desk.reject("race-post", FIN, "not this one")  # decided before the post went out
        poster = SlackPoster(lambda: settings(slack), lambda flow_id: f"http://127.0.0.1:9/flows/{flow_id}",
                             remember=desk.note_slack_message)
        poster.start()
        try:
            poster.on_hold("held", posted_state)
            message = slack.message_for("race-post")
            slack.wait_for(lambda: "Rejected" in message.status, what="the message to say rejected")
        finally:
            poster.stop()
        assert len(message.versions) == 2  # posted "waiting", rewritten once
        assert desk.slack_message("race-post") == {"channel": message.channel, "ts": message.ts}


def test_the_posting_gateway_rewrites_a_message_the_deciding_gateway_did_not_know(slack: FakeSlack):
    with running_desk() as desk:
        policy = SimpleNamespace(policy=SimpleNamespace(settings={"slack": settings(slack)}))
        notify = NotifyAddon(SimpleNamespace(bus=desk.book.bus), desk, policy)
        notify.running()
        try:
            desk.bridge.call(desk.book.hold, hold_record("race-note", time.time()))
            message = slack.message_for("race-note")
            slack.wait_for(lambda: desk.slack_message("race-note"), what="the message on the record")

            def decided_elsewhere() -> None:
                # Another gateway rejected it on a record without the message (this
                # gateway's note lost against the decision); its mirror now has that row.
                hold = desk.book.find("race-note")
                hold.slack_message, hold.decision, hold.decided_by = None, "rejected", "bob"
                hold.comment, hold.decided_at = "wrong order", time.time()
                desk.book.bus.publish(Event("race-note", EventKind.REJECTED, time.time(), "bob",
                                            {"comment": "wrong order", "decided_elsewhere": True}))

            desk.bridge.call(decided_elsewhere)
            status = slack.wait_for(lambda: "Rejected" in message.status and message.status,
                                    what="the message to say rejected")
            assert "by bob" in status and "wrong order" in status
        finally:
            notify.done()
