"""Slack with shared state: two real gateways on one real PostgreSQL (``--state``), one fake Slack.

A hold is posted to Slack once for the cluster, by the gateway that took it; where the
message is (channel, ts) is kept on the hold record in PostgreSQL, so the gateway where
a reviewer decides (its Slack endpoint, its API) rewrites the message, although another
gateway posted it. (Before, the message was known only to the posting process: a
decision on the other gateway left it saying "waiting".)
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from review_ui.reviewers import add_reviewer, dump_reviewers, parse_reviewers
from tests.support.fake_slack import FakeSlack, Message
from tests.support.gateway import GatewayProcess, free_port
from tests.support.review import AGENT_TOKENS, PASSWORD_SUFFIX, REVIEWERS, rules_text
from tests.support.upstream import UpstreamServer

BOT_TOKEN = "xoxb-test-cluster-0123456789"
SIGNING_SECRET = "cluster-signing-secret-0123456789abcdef"
SLACK_USERS = {"alice": "U0ALICE", "bob": "U0BOB", "carol": "U0CAROL", "dave": "U0DAVE"}
REFUND = {"amount": 250, "order": "A-7"}


class Node:
    """One gateway of the two, with its own review UI (and Slack endpoint)."""

    def __init__(self, rig: Rig, name: str) -> None:
        self.rig, self.name = rig, name
        self.ui_port = free_port()
        self.gateway = GatewayProcess(rig.rules, rig.confdir, [
            "--ui", f"127.0.0.1:{self.ui_port}", "--reviewers", str(rig.reviewers_file),
            "--state", rig.dsn, "--db", str(rig.directory / f"recording-{name}.duckdb"),
        ], {"TEST_SLACK_BOT_TOKEN": BOT_TOKEN, "TEST_SLACK_SIGNING_SECRET": SIGNING_SECRET}).start()

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def api(self, reviewer: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            return session.request(method, self.ui_url + path, timeout=10,
                                   headers={"Authorization": f"Bearer {self.rig.tokens[reviewer]}"}, **kwargs)

    def agent(self, path: str) -> Future:
        proxy = f"http://billing-agent:{AGENT_TOKENS['billing-agent']}@127.0.0.1:{self.gateway.port}"

        def call() -> requests.Response:
            with requests.Session() as session:
                session.trust_env = False
                return session.post(self.rig.upstream.url(path), json=REFUND, timeout=40,
                                    proxies={"http": proxy, "https": proxy})

        return self.rig.pool.submit(call)

    def listed(self, path: str) -> dict[str, Any] | None:
        pending = self.api("alice", "GET", "/api/pending").json()["pending"]
        return next((h for h in pending if h["url"].endswith(path)), None)


class Rig:
    def __init__(self, directory: Path, confdir: Path, dsn: str, slack: FakeSlack) -> None:
        self.directory, self.confdir, self.dsn, self.slack = directory, confdir, dsn, slack
        self.reviewers_file = directory / "reviewers.yaml"
        self.tokens: dict[str, str] = {}
        for name, groups in REVIEWERS.items():
            _, token = add_reviewer(self.reviewers_file, name, groups, name + PASSWORD_SUFFIX)
            assert token is not None
            self.tokens[name] = token
        reviewers = parse_reviewers(self.reviewers_file.read_text())
        self.reviewers_file.write_text(dump_reviewers(
            {name: replace(r, slack_user=SLACK_USERS[name]) for name, r in reviewers.items()}))
        self.rules = directory / "rules.yaml"
        self.rules.write_text(rules_text(textwrap.dedent(f"""
            slack:
              channel: {slack.channel}
              bot_token: ${{env:TEST_SLACK_BOT_TOKEN}}
              signing_secret: ${{env:TEST_SLACK_SIGNING_SECRET}}
              api_url: {slack.api_url}
        """)))
        self.upstream = UpstreamServer().start()
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.a = Node(self, "a")
        self.b = Node(self, "b")

    def stop(self) -> None:
        for node in (self.a, self.b):
            node.gateway.stop()
        self.upstream.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def messages_about(self, flow_id: str) -> list[Message]:
        return [m for m in list(self.slack.messages) if flow_id in m.all_text()]

    def message_on_record(self, flow_id: str) -> dict[str, str] | None:
        """The hold record's Slack message, as PostgreSQL has it."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT record->'slack_message' FROM portcullis_holds WHERE id = %s",
                               (flow_id,)).fetchone()
        return row[0] if row else None


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir: Path, postgres_dsn: str) -> Iterator[Rig]:
    slack = FakeSlack(BOT_TOKEN, SIGNING_SECRET).start()
    rig = Rig(tmp_path_factory.mktemp("slack-cluster"), confdir, postgres_dsn, slack)
    yield rig
    rig.stop()
    slack.stop()


def held(rig: Rig, on: Node, path: str) -> tuple[Future, dict[str, Any], Message]:
    """A hold taken by ``on``, listed by both gateways, its message posted and on its record."""
    call = on.agent(path)
    hold = rig.slack.wait_for(lambda: on.listed(path), what=f"{on.name} to hold {path}")
    other = rig.b if on is rig.a else rig.a
    rig.slack.wait_for(lambda: other.listed(path), what=f"{other.name} to list the hold of {path}")
    message = rig.slack.message_for(hold["flow_id"])
    where = rig.slack.wait_for(lambda: rig.message_on_record(hold["flow_id"]), what="the message on the record")
    assert where == {"channel": message.channel, "ts": message.ts}
    return call, hold, message


def test_a_slack_click_on_the_other_gateway_decides_and_updates_the_message_posted_once(rig: Rig):
    call, hold, message = held(rig, rig.a, "/v1/refunds?t=cluster-slack")
    # The click reaches gateway B (behind a load balancer, any gateway may get it).
    clicked = rig.slack.click(rig.b.ui_url + "/slack/interactions", message, "portcullis_approve", SLACK_USERS["bob"])
    assert clicked.status_code == 200 and clicked.json()["status"] == "approved", clicked.text
    assert call.result(timeout=10).status_code == 200  # A forwarded it
    status = rig.slack.wait_for(lambda: "Approved" in message.status and message.status,
                                what="the message to say approved")
    assert "Approved* by bob" in status and "forwarded" in status
    assert message.button("portcullis_approve") is None  # decided: no buttons
    assert len(rig.messages_about(hold["flow_id"])) == 1  # posted once for the cluster


def test_an_api_decision_on_the_other_gateway_updates_the_message(rig: Rig):
    call, hold, message = held(rig, rig.b, "/v1/refunds?t=cluster-api")
    rejected = rig.a.api("alice", "POST", f"/api/flows/{hold['flow_id']}/reject", json={"comment": "wrong order"})
    assert rejected.status_code == 200, rejected.text
    assert call.result(timeout=10).status_code == 403
    status = rig.slack.wait_for(lambda: "Rejected" in message.status and message.status,
                                what="the message to say rejected")
    assert "Rejected* by alice" in status and "wrong order" in status
    assert len(rig.messages_about(hold["flow_id"])) == 1
    # Each change is one rewrite: posted, then rejected (nobody else rewrote it again).
    assert len(message.versions) == 2
