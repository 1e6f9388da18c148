"""Hold notifications when things go wrong, in process (a real hold desk on a running
loop, the local fake Slack, a local webhook receiver): Slack errors and unreachable APIs
are logged, never raised; webhooks are retried, then given up; a full backlog drops; a
stopped notifier lets go of its retries; and what a message says for abandoned and
escalated holds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from addons.core.events import Event, EventBus, EventKind
from addons.credentials.secretrefs import Resolved
from addons.holds import notify as notify_module
from addons.holds.book import DecisionError
from addons.holds.notify import NotifyAddon, SlackPoster, outcome_line
from addons.holds.spec import SlackSettings, Webhook
from tests.support.fake_slack import FakeSlack
from tests.support.hold_desk import hold_record, running_desk

BOT_TOKEN = "xoxb-notify-failures-0123456789"
DEAD_API = "http://127.0.0.1:9/api"  # the discard port: nothing listens, connections are refused


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(BOT_TOKEN, "signing-secret-notify-failures").start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify_module, "BACKOFF_S", 0.01)


def settings(api_url: str, channel: str) -> SlackSettings:
    return SlackSettings(channel, Resolved(BOT_TOKEN), Resolved("signing-secret-notify-failures"), api_url)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_what_the_message_says_for_abandoned_and_escalated_holds() -> None:
    assert "*Abandoned*: the agent hung up before a decision" in outcome_line({"status": "abandoned"})
    line = outcome_line({"status": "pending", "deadline": time.time() + 60, "escalated": True,
                         "escalate_to": ["security-oncall", "<!channel>"]})
    assert line.startswith(":hourglass_flowing_sand: *Waiting for a decision*")
    # Escaped: a group name from the rules cannot ping the channel.
    assert line.endswith("; escalated to security-oncall, &lt;!channel&gt;")
    assert "escalated" not in outcome_line({"status": "pending", "deadline": time.time() + 60})


def test_without_slack_settings_nothing_is_sent(slack: FakeSlack) -> None:
    poster = SlackPoster(lambda: None)
    poster.stop()  # never started: nothing to stop
    poster.start()
    try:
        before = len(slack.messages)
        poster.on_hold("held", {"flow_id": "no-settings", "status": "pending"})
        assert poster.open_view("trigger", {"type": "modal"}) is False
        poster.tell(f"{slack.api_url}/response/x", "hello")
    finally:
        poster.stop()
    assert len(slack.messages) == before and slack.ephemeral == []
    assert poster.pool is None


def test_a_slack_error_answer_is_logged_and_the_message_not_remembered(
        slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    with running_desk() as desk:
        desk.bridge.call(desk.book.hold, hold_record("wrong-channel", time.time()))
        poster = SlackPoster(lambda: settings(slack.api_url, "C0NOSUCHCHANNEL"))
        poster.start()
        with caplog.at_level(logging.ERROR, "portcullis.notify"):
            try:
                poster.on_hold("held", desk.find("wrong-channel"))
            finally:
                poster.stop()
    assert "slack chat.postMessage" in caplog.text
    assert "failed: Slack answered channel_not_found" in caplog.text
    assert not poster.posted_here("wrong-channel")


def test_an_unreachable_slack_is_tried_twice_then_logged(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = notify_module._post_json

    def counting(url: str, body: dict, headers: dict) -> dict:
        calls.append(url)
        return real(url, body, headers)

    monkeypatch.setattr(notify_module, "_post_json", counting)
    poster = SlackPoster(lambda: settings(DEAD_API, "C0X"))
    with caplog.at_level(logging.ERROR, "portcullis.notify"):
        assert poster.open_view("trigger-1", {"type": "modal"}) is False
    assert calls == [f"{DEAD_API}/views.open"] * 2
    assert "slack views.open" in caplog.text and "Connection refused" in caplog.text


def test_a_failed_ephemeral_answer_is_logged_on_the_slack_thread(caplog: pytest.LogCaptureFixture) -> None:
    poster = SlackPoster(lambda: settings(DEAD_API, "C0X"))
    poster.start()
    with caplog.at_level(logging.ERROR, "portcullis.notify"):
        try:
            poster.tell("http://127.0.0.1:9/response/abc", "your click was refused")  # the API's own host
            wait_until(lambda: "slack delivery failed" in caplog.text, "the failure to be logged")
        finally:
            poster.stop()
    assert "slack delivery failed" in caplog.text


def test_an_update_of_a_message_never_posted_sends_nothing(slack: FakeSlack) -> None:
    with running_desk() as desk:
        desk.bridge.call(desk.book.hold, hold_record("never-posted", time.time()))
        poster = SlackPoster(lambda: settings(slack.api_url, slack.channel))
        poster.start()
        updates_before = sum(len(m.versions) for m in slack.messages)
        try:
            poster.on_hold("approved", {**desk.find("never-posted"), "slack_message": None})
        finally:
            poster.stop()
    assert sum(len(m.versions) for m in slack.messages) == updates_before
    assert not poster.posted_here("never-posted")


def test_only_the_latest_messages_are_kept(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify_module, "MESSAGES_KEPT", 1)
    with running_desk() as desk:
        for flow_id in ("kept-1", "kept-2"):
            desk.bridge.call(desk.book.hold, hold_record(flow_id, time.time()))
        poster = SlackPoster(lambda: settings(slack.api_url, slack.channel))
        poster.start()
        try:
            poster.on_hold("held", desk.find("kept-1"))
            poster.on_hold("held", desk.find("kept-2"))
        finally:
            poster.stop()
    slack.message_for("kept-2")
    assert not poster.posted_here("kept-1")
    assert poster.posted_here("kept-2")


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint that answers every POST with ``status``."""

    daemon_threads = True

    def __init__(self, status: int) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.posts += 1
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)
        self.status, self.posts, self.lock = status, 0, threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def failing_hook() -> Iterator[Receiver]:
    receiver = Receiver(500)
    yield receiver
    receiver.close()


def notifier(desk: Any, hooks: list[Webhook]) -> NotifyAddon:
    policy = SimpleNamespace(policy=SimpleNamespace(settings={"notify": hooks}))
    return NotifyAddon(SimpleNamespace(bus=desk.book.bus), desk, policy)


def test_a_failing_webhook_is_retried_then_given_up(failing_hook: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    with running_desk() as desk, caplog.at_level(logging.WARNING, "portcullis.notify"):
        notify = notifier(desk, [Webhook(failing_hook.url, "json", frozenset({"held"}))])
        notify.running()
        try:
            desk.bridge.call(desk.book.hold, hold_record("webhook-500", time.time()))
            wait_until(lambda: "giving up" in caplog.text, "the notifier to give up")
        finally:
            notify.done()
    assert failing_hook.posts == notify_module.ATTEMPTS
    assert f"webhook {failing_hook.url}: giving up after 3 attempts: HTTP 500" in caplog.text
    assert notify._backlog == 0


def test_a_retry_due_after_the_notifier_stopped_is_let_go(failing_hook: Receiver,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify_module, "BACKOFF_S", 1.0)  # done() comes well before the retry
    with running_desk() as desk:
        notify = notifier(desk, [Webhook(failing_hook.url, "json", frozenset({"held"}))])
        notify.running()
        desk.bridge.call(desk.book.hold, hold_record("webhook-stop", time.time()))
        wait_until(lambda: failing_hook.posts == 1, "the first attempt")
        notify.done()  # before the retry's timer fires
        wait_until(lambda: notify._backlog == 0, "the retry to be dropped")
    assert failing_hook.posts == 1


def test_a_webhook_url_urllib_cannot_parse_is_an_unexpected_error(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(notify_module, "ATTEMPTS", 1)
    with running_desk() as desk, caplog.at_level(logging.ERROR, "portcullis.notify"):
        notify = notifier(desk, [Webhook("http://[not-an-address/hook", "json", frozenset({"held"}))])
        notify.running()
        try:
            desk.bridge.call(desk.book.hold, hold_record("webhook-bad-url", time.time()))
            wait_until(lambda: "giving up" in caplog.text, "the notifier to give up")
        finally:
            notify.done()
    assert "giving up after 1 attempts: unexpected error: " in caplog.text
    assert notify._backlog == 0


def test_a_full_backlog_drops_the_notification(failing_hook: Receiver, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(notify_module, "MAX_BACKLOG", 0)
    with running_desk() as desk, caplog.at_level(logging.ERROR, "portcullis.notify"):
        notify = notifier(desk, [Webhook(failing_hook.url, "json", frozenset({"held"}))])
        notify.running()
        try:
            desk.bridge.call(desk.book.hold, hold_record("backlog-full", time.time()))
        finally:
            notify.done()
    assert f"notification backlog full; dropping held for {failing_hook.url}" in caplog.text
    assert failing_hook.posts == 0


class BrokenDesk:
    """A desk whose lookups fail, or find nothing."""

    def __init__(self, find: Callable[[str], Any]) -> None:
        self.book = SimpleNamespace(bus=EventBus())
        self.find = find
        self.slack = None

    def slack_message(self, flow_id: str) -> None:
        return None

    def note_slack_message(self, flow_id: str, channel: str, ts: str) -> dict:
        raise DecisionError(409, "stopping", "the gateway is stopping")


def test_a_notifier_bug_never_reaches_the_flow(failing_hook: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    def explode(flow_id: str) -> Any:
        raise RuntimeError("desk bug")

    desk = BrokenDesk(explode)
    notify = notifier(desk, [Webhook(failing_hook.url, "json", frozenset({"held"}))])
    notify.running()
    try:
        with caplog.at_level(logging.ERROR, "portcullis.notify"):
            desk.book.bus.publish(Event("bug-flow", EventKind.HELD, time.time(),
                                                      "gateway", {}))
    finally:
        notify.done()
    assert "could not queue the held notification for flow bug-flow" in caplog.text
    assert failing_hook.posts == 0


def test_an_event_for_an_unknown_hold_sends_nothing(failing_hook: Receiver) -> None:
    desk = BrokenDesk(lambda flow_id: None)
    notify = notifier(desk, [Webhook(failing_hook.url, "json", frozenset({"held"}))])
    notify.running()
    try:
        notify.on_event(Event("gone", EventKind.HELD, time.time(), "gateway", {}))
        assert notify._backlog == 0
    finally:
        notify.done()
    assert failing_hook.posts == 0


def test_a_message_posted_while_stopping_is_not_kept(caplog: pytest.LogCaptureFixture) -> None:
    notify = notifier(BrokenDesk(lambda flow_id: None), [])
    with caplog.at_level(logging.WARNING, "portcullis.notify"):
        assert notify.remember_message("late-flow", "C0X", "1.000001") is None
    assert "could not keep the Slack message of late-flow: the gateway is stopping" in caplog.text
