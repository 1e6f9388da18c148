"""The review page's "Recent flows in this session" shows the held flow's own identity only.

The session id is whatever the agent sent in X-Portcullis-Session, so agent-b could name
agent-a's session and plant a request in the history a reviewer reads before deciding
agent-a's hold. The list is now keyed by identity AND session.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import duckdb
import pytest
import requests

from review_ui import create_app
from review_ui.audit.sessions import recent_flows
from review_ui.reviewers import ReviewerStore
from tests.support.hold_desk import idle_desk
from tests.support.review import PASSWORD_SUFFIX, ReviewRig
from tests.support.review_login import sign_in

SESSION = "shared-session-7"
REFUND_PATH = "/v1/refunds"


class FakeRecorder:
    """A recorder whose store is a real DuckDB table with the recording's columns."""

    def __init__(self) -> None:
        self.db = duckdb.connect()
        self.db.execute("CREATE TABLE flows (id TEXT, started_at TIMESTAMP, method TEXT, host TEXT, path TEXT, "
                        "status_code INT, decision TEXT, identity TEXT, session_id TEXT)")
        self.store = SimpleNamespace(query=self.query)

    def query(self, sql: str, params: list) -> tuple[list[str], list[tuple]]:
        result = self.db.execute(sql, params)
        return [d[0] for d in result.description], result.fetchall()


def test_recent_flows_are_keyed_by_identity_and_session():
    recorder = FakeRecorder()
    recorder.db.execute("INSERT INTO flows VALUES "
                        "('a1', now(), 'GET', 'api', '/own', 200, 'allowed', 'agent-a', ?), "
                        "('b1', now(), 'GET', 'api', '/planted', 200, 'allowed', 'agent-b', ?), "
                        "('n1', now(), 'GET', 'api', '/anonymous', 200, 'allowed', NULL, ?), "
                        "('a2', now(), 'GET', 'api', '/other-session', 200, 'allowed', 'agent-a', 'x')",
                        [SESSION, SESSION, SESSION])
    app = create_app(idle_desk(), ReviewerStore(None), recorder=lambda: recorder)
    with app.app_context():
        assert [f["path"] for f in recent_flows("agent-a", SESSION)] == ["/own"]
        assert [f["path"] for f in recent_flows("agent-b", SESSION)] == ["/planted"]
        assert [f["path"] for f in recent_flows(None, SESSION)] == ["/anonymous"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("recent"), confdir)
    yield rig
    rig.stop()


def review_page(rig: ReviewRig, cookie: str, flow_id: str) -> str:
    response = requests.get(f"{rig.ui_url}/flows/{flow_id}", headers={"Cookie": cookie}, timeout=10,
                            proxies={"http": "", "https": ""})
    assert response.status_code == 200, response.text
    return response.text


def test_real_gateway_a_flow_planted_by_another_agent_is_not_shown(rig: ReviewRig):
    session = {"X-Portcullis-Session": SESSION}
    # "alice" (agent-b here) names billing-agent's session; billing-agent makes its own call.
    assert rig.call("GET", "/planted-by-alice", "alice", headers=session).status_code == 200
    assert rig.call("GET", "/own-call", "billing-agent", headers=session).status_code == 200
    mine = rig.agent("POST", REFUND_PATH + "?t=mine", "billing-agent", json={"amount": 250}, headers=session)
    theirs = rig.agent("POST", REFUND_PATH + "?t=theirs", "alice", json={"amount": 250}, headers=session)
    held_mine = rig.wait_held(REFUND_PATH + "?t=mine")
    held_theirs = rig.wait_held(REFUND_PATH + "?t=theirs")
    cookie, _ = sign_in(rig.ui_url, "carol", "carol" + PASSWORD_SUFFIX)
    try:
        page = rig.wait_for(lambda: (p := review_page(rig, cookie, held_mine["flow_id"])) and "/own-call" in p
                            and p, what="billing-agent's own call in its session history")
        assert "/planted-by-alice" not in page
        other = rig.wait_for(lambda: (p := review_page(rig, cookie, held_theirs["flow_id"]))
                             and "/planted-by-alice" in p and p, what="alice's call in her session history")
        assert "/own-call" not in other
    finally:
        for hold in (held_mine, held_theirs):
            rig.reject("bob", hold["flow_id"])
        mine.result(timeout=10), theirs.result(timeout=10)
