"""The review UI's holds side through Flask's test client, against an in-memory hold book.

No gateway: a real :class:`HoldDesk` over a :class:`HoldBook` whose event loop runs in
a thread of this process (tests.support.hold_desk). The JSON API's decisions and their
refusals, grants, the body download, the pages' decide form, the live feed, and the
defect of issue 13: ``create_app`` subscribed its feed on every rebuild and never
unsubscribed (now ``close_app`` does, and the server addon calls it on reconfigure).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy.test import taddons

from addons.core.flowstate import FlowStates
from addons.holds.book import Actor, HoldBook
from addons.holds.desk import HoldDesk
from review_ui import close_app, create_app
from review_ui.reviewers import ReviewerStore, add_reviewer
from review_ui.server_addon import ReviewServerAddon
from tests.support.gateway import free_port
from tests.support.hold_desk import hold_record, running_desk
from tests.support.review import PASSWORD_SUFFIX
from tests.support.review_login import csrf_of

GROUPS = {"alice": ["finance-leads"], "bob": ["finance-leads"], "dave": ["support"]}
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def reviewers_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("ui-logic") / "reviewers.yaml"
    tokens = {name: add_reviewer(path, name, groups, name + PASSWORD_SUFFIX)[1] for name, groups in GROUPS.items()}
    return path, tokens


@pytest.fixture(scope="module")
def desk() -> Iterator[HoldDesk]:
    with running_desk() as desk:
        yield desk


@pytest.fixture(scope="module")
def app(desk: HoldDesk, reviewers_file):
    app = create_app(desk, ReviewerStore(reviewers_file[0]))
    yield app
    close_app(app)


@pytest.fixture(scope="module")
def tokens(reviewers_file) -> dict[str, str]:
    return reviewers_file[1]


def held(desk: HoldDesk, **spec) -> str:
    """Open a hold in the book (on its loop, as the addon would); its id."""
    flow_id = f"ui-{next(_ids)}"
    desk.bridge.call(desk.book.hold, hold_record(flow_id, time.time(), **spec))
    return flow_id


def api(app, tokens, who: str, method: str, path: str, **kwargs):
    return app.test_client().open(path, method=method, headers={"Authorization": f"Bearer {tokens[who]}"}, **kwargs)


# --- the JSON API ------------------------------------------------------------------------


def test_the_api_lists_shows_and_decides_a_hold_and_refuses_deciding_twice(app, desk, tokens):
    flow_id = held(desk)
    pending = api(app, tokens, "alice", "GET", "/api/pending").json["pending"]
    assert flow_id in [h["flow_id"] for h in pending]
    shown = api(app, tokens, "alice", "GET", f"/api/flows/{flow_id}").json
    assert (shown["you_may_decide"], shown["why_not"], shown["status"]) == (True, None, "pending")
    assert [e["kind"] for e in shown["events"]] == ["held"]

    decided = api(app, tokens, "alice", "POST", f"/api/flows/{flow_id}/approve", json={"comment": "ok"})
    assert decided.status_code == 200, decided.text
    assert (decided.json["status"], decided.json["decided_by"], decided.json["comment"]) == ("approved", "alice", "ok")
    again = api(app, tokens, "bob", "POST", f"/api/flows/{flow_id}/reject", json={})
    assert (again.status_code, again.json["error"]) == (409, "already_decided")
    assert flow_id in [h["flow_id"] for h in api(app, tokens, "bob", "GET", "/api/decisions").json["decisions"]]
    assert api(app, tokens, "bob", "GET", f"/api/flows/{flow_id}").json["events"][-1]["kind"] == "approved"


def test_the_api_refuses_own_requests_other_groups_and_a_second_vote(app, desk, tokens):
    own = held(desk, identity="alice")
    refused = api(app, tokens, "alice", "POST", f"/api/flows/{own}/approve", json={})
    assert (refused.status_code, refused.json["error"]) == (403, "self_approval")
    outsider = api(app, tokens, "dave", "POST", f"/api/flows/{own}/reject", json={})
    assert (outsider.status_code, outsider.json["error"]) == (403, "not_an_approver")
    shown = api(app, tokens, "dave", "GET", f"/api/flows/{own}").json
    assert shown["you_may_decide"] is False and "finance-leads" in shown["why_not"]

    two = held(desk, approvals_required=2)
    first = api(app, tokens, "alice", "POST", f"/api/flows/{two}/approve", json={})
    assert (first.json["status"], len(first.json["approvals"])) == ("pending", 1)
    second = api(app, tokens, "alice", "POST", f"/api/flows/{two}/approve", json={})
    assert (second.status_code, second.json["error"]) == (409, "already_approved")
    assert api(app, tokens, "alice", "GET", f"/api/flows/{two}").json["why_not"] == \
        "You already approved; another reviewer must approve too."
    assert api(app, tokens, "bob", "POST", f"/api/flows/{two}/approve", json={}).json["status"] == "approved"


def test_the_api_validates_its_input_and_answers_404_for_unknown_ids(app, desk, tokens):
    flow_id = held(desk, grant=900.0)
    for body, error in (([1], "bad_request"), ({"comment": 5}, "bad_request"), ({"grant": "forever"}, "bad_grant")):
        answer = api(app, tokens, "alice", "POST", f"/api/flows/{flow_id}/approve", json=body)
        assert (answer.status_code, answer.json["error"]) == (400, error), body
    too_long = api(app, tokens, "alice", "POST", f"/api/flows/{flow_id}/approve", json={"grant": "1h"})
    assert (too_long.status_code, too_long.json["error"]) == (400, "grant_too_long")
    unknown = api(app, tokens, "alice", "GET", "/api/flows/no-such-flow")
    assert (unknown.status_code, unknown.json["error"]) == (404, "unknown_flow")
    assert api(app, tokens, "alice", "DELETE", "/api/grants/nope").json["error"] == "unknown_grant"


def test_grants_are_listed_and_revoked_through_the_api(app, desk, tokens):
    flow_id = held(desk, grant=900.0)
    approved = api(app, tokens, "alice", "POST", f"/api/flows/{flow_id}/approve", json={"grant": "10m"})
    grant_id = approved.json["grant_id"]
    listed = api(app, tokens, "bob", "GET", "/api/grants").json["grants"]
    assert [(g["id"], g["flow_id"], g["created_by"]) for g in listed if g["id"] == grant_id] == \
        [(grant_id, flow_id, "alice")]
    revoked = api(app, tokens, "bob", "DELETE", f"/api/grants/{grant_id}")
    assert revoked.status_code == 200 and revoked.json["revoked"]["id"] == grant_id
    assert grant_id not in [g["id"] for g in api(app, tokens, "bob", "GET", "/api/grants").json["grants"]]
    assert api(app, tokens, "bob", "DELETE", f"/api/grants/{grant_id}").status_code == 404


def test_the_body_download_serves_the_exact_bytes_until_the_hold_is_decided(app, desk, tokens):
    flow_id = held(desk, body=b'{"amount": 901}')
    download = api(app, tokens, "alice", "GET", f"/api/flows/{flow_id}/body")
    assert download.status_code == 200 and download.data == b'{"amount": 901}'
    assert download.headers["Content-Disposition"] == f'attachment; filename="{flow_id}.body"'
    assert len(download.headers["X-Body-SHA256"]) == 64
    api(app, tokens, "bob", "POST", f"/api/flows/{flow_id}/reject", json={"comment": "no"})
    gone = api(app, tokens, "alice", "GET", f"/api/flows/{flow_id}/body")
    assert (gone.status_code, gone.json["error"]) == (410, "body_released")


# --- the pages ---------------------------------------------------------------------------


def signed_in(app, name: str):
    client = app.test_client()
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"name": name, "password": name + PASSWORD_SUFFIX, "csrf_token": token})
    assert response.status_code == 302, response.text
    return client


def test_the_queue_and_review_pages_and_the_decide_form(app, desk):
    flow_id = held(desk, approvals_required=2)
    alice = signed_in(app, "alice")
    assert flow_id in alice.get("/").text and flow_id in alice.get("/queue/rows").text
    page = alice.get(f"/flows/{flow_id}")
    assert page.status_code == 200 and 'id="decide-form"' in page.text
    token = csrf_of(page.text)
    voted = alice.post(f"/flows/{flow_id}/decide", data={"action": "approve", "comment": "", "csrf_token": token})
    assert voted.status_code == 302
    assert "Your approval is recorded; 1 more needed." in alice.get(f"/flows/{flow_id}").text
    again = alice.post(f"/flows/{flow_id}/decide", data={"action": "approve", "comment": "", "csrf_token": token})
    assert again.status_code == 409 and "you already approved" in again.text

    bob = signed_in(app, "bob")
    token = csrf_of(bob.get(f"/flows/{flow_id}").text)
    assert bob.post(f"/flows/{flow_id}/decide", data={"action": "approve", "csrf_token": token}).status_code == 302
    assert "Approved; the gateway forwarded the request to the upstream." in bob.get(f"/flows/{flow_id}").text
    assert bob.get("/flows/no-such-flow").status_code == 404
    assert flow_id in bob.get("/decisions").text


def test_a_grant_is_revoked_from_the_decisions_page(app, desk, tokens):
    flow_id = held(desk, grant=900.0)
    grant_id = api(app, tokens, "alice", "POST", f"/api/flows/{flow_id}/approve", json={"grant": "5m"}).json["grant_id"]
    bob = signed_in(app, "bob")
    token = csrf_of(bob.get("/decisions").text)
    assert bob.post(f"/grants/{grant_id}/revoke", data={"csrf_token": token}).status_code == 302
    assert "revoked; identical requests are held again" in bob.get("/decisions").text
    assert grant_id not in [g["id"] for g in desk.grants()]


# --- the live feed and its subscription --------------------------------------------------


def feed(app) -> list[tuple[str, str]]:
    broker = app.extensions["portcullis"].broker
    return [(kind, payload) for _seq, kind, payload in broker._backlog]


def test_the_live_feed_tells_of_holds_votes_decisions_and_grants(desk, reviewers_file):
    app = create_app(desk, ReviewerStore(reviewers_file[0]))
    try:
        alice, bob = (Actor(n, frozenset({"finance-leads"})) for n in ("alice", "bob"))
        flow_id = held(desk, approvals_required=2, grant=900.0)
        desk.approve(flow_id, alice)
        desk.approve(flow_id, bob, "", 60.0)
        kinds = [kind for kind, payload in feed(app) if flow_id in payload or kind == "grants"]
        assert kinds == ["held", "updated", "grants", "decided"]
    finally:
        close_app(app)


def test_a_rebuilt_app_leaves_no_listener_behind(desk, reviewers_file):
    store = ReviewerStore(reviewers_file[0])
    first = create_app(desk, store)
    close_app(first)
    close_app(first)  # twice is harmless
    second = create_app(desk, store)
    try:
        before = len(feed(first))
        held(desk)
        assert len(feed(first)) == before  # the closed app hears nothing more
        assert feed(second)[-1][0] == "held"
    finally:
        close_app(second)


def test_reconfiguring_the_server_addon_closes_the_previous_app(reviewers_file):
    states = FlowStates()
    book = HoldBook(bus=states.bus)
    with running_desk(book) as desk:
        addon = ReviewServerAddon(states, desk)
        with taddons.context(addon) as tctx:
            apps = []
            for _ in range(3):
                tctx.configure(addon, portcullis_ui=f"127.0.0.1:{free_port()}",
                               portcullis_reviewers=str(reviewers_file[0]))
                apps.append(addon.app)
            held(desk)
            assert [len(feed(a)) for a in apps] == [0, 0, 1]
            addon.done()
            held(desk)
            assert len(feed(apps[-1])) == 1
