"""Where a decision came from, and the comment a rejection needs, on every path of one gateway.

One real gateway (module-scoped): reviewers decide through the review page's form (a
browser session with its CSRF token), the JSON API with a token, and ``portcullis
approve/reject`` (the CLI's entry point in this process, against the same gateway). The
audit trail names the origin (``via``: ui | api | cli | slack), derived from how the
caller authenticated: a token client may say it is the terminal, never Slack. The same
``via`` is in the recording's decided event. An empty rejection comment is refused by
the hold book, so the API and the CLI answer ``comment_required`` and decide nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
from collections.abc import Iterator

import pytest
import requests

from gateway.cli import main as gateway_main
from recordings.control import ask
from tests.support.review import PASSWORD_SUFFIX, ReviewRig

REFUND = {"amount": 250, "order": "A-7"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("origin"), confdir)
    yield rig
    rig.stop()


def cli(rig: ReviewRig, *args: str, reviewer: str = "bob") -> subprocess.CompletedProcess[str]:
    """`portcullis ARGS` (gateway.cli.main, in this process) with ``reviewer``'s token."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update({"PORTCULLIS_UI": rig.ui_url, "PORTCULLIS_TOKEN": rig.tokens[reviewer]})
        os.environ.pop("PORTCULLIS_TOKEN_FILE", None)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = gateway_main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["portcullis", *args], code, out.getvalue(), err.getvalue())


def decided_event(rig: ReviewRig, flow_id: str, kind: str) -> dict:
    return next(e for e in rig.flow(flow_id)["events"] if e["kind"] == kind)


class InsecureCookies(requests.Session):
    """The session cookie is ``Secure``: Chromium sends it to http://127.0.0.1 (a secure
    context), requests would not, so this session drops the flag of what it stores."""

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        response = super().send(request, **kwargs)
        for cookie in self.cookies:
            cookie.secure = False
        return response


def browser_session(rig: ReviewRig, name: str) -> requests.Session:
    """A reviewer signed in through the login form, as a browser would be."""
    http = InsecureCookies()
    http.trust_env = False
    page = http.get(rig.ui_url + "/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    signed_in = http.post(rig.ui_url + "/login", timeout=10, data={
        "csrf_token": token, "name": name, "password": name + PASSWORD_SUFFIX, "next": "/"})
    assert signed_in.status_code == 200 and "Sign out" in signed_in.text, signed_in.text[signed_in.text.find("<main"):][:800]
    return http


def test_a_rejection_without_a_comment_is_refused_by_the_api_and_the_cli(rig: ReviewRig):
    path = "/v1/refunds?t=origin-empty"
    call = rig.agent("POST", path, json=REFUND)
    hold = rig.wait_held(path)
    for empty in ("", "   "):
        refused = rig.reject("alice", hold["flow_id"], empty)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "comment_required" and "needs a comment" in refused.json()["message"]
    terminal = cli(rig, "reject", hold["flow_id"])
    assert terminal.returncode == 1 and "comment_required" in terminal.stderr, terminal.stderr
    flow = rig.flow(hold["flow_id"])
    assert flow["status"] == "pending" and [e["kind"] for e in flow["events"]] == ["held"]
    assert rig.reject("alice", hold["flow_id"], "wrong order").status_code == 200
    assert call.result(timeout=10).json()["comment"] == "wrong order"


def test_the_terminal_api_and_review_page_are_named_in_the_audit_trail_and_the_recording(rig: ReviewRig):
    flows = {}
    for how in ("cli", "api", "claims-slack", "ui"):
        path = f"/v1/anyone?t=origin-{how}"
        flows[how] = (rig.agent("POST", path, json={}), rig.wait_held(path)["flow_id"])
    assert cli(rig, "approve", flows["cli"][1], "--comment", "ok from a shell").returncode == 0
    assert rig.approve("carol", flows["api"][1], "by script").status_code == 200
    # A token client cannot claim Slack (or the UI): not by header, not in the body.
    claimed = rig.api("dave", "POST", f"/api/flows/{flows['claims-slack'][1]}/reject",
                      json={"comment": "no", "via": "slack"}, headers={"X-Portcullis-Client": "slack"})
    assert claimed.status_code == 200
    browser = browser_session(rig, "bob")
    page = browser.get(f"{rig.ui_url}/flows/{flows['ui'][1]}", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = browser.post(f"{rig.ui_url}/flows/{flows['ui'][1]}/decide", timeout=10, allow_redirects=False,
                        data={"csrf_token": token, "action": "approve", "comment": "looked fine"})
    assert form.status_code == 302, form.text
    for call, _ in flows.values():
        call.result(timeout=10)

    expected = {"cli": ("approved", "bob", "cli"), "api": ("approved", "carol", "api"),
                "claims-slack": ("rejected", "dave", "api"), "ui": ("approved", "bob", "ui")}
    for how, (kind, actor, via) in expected.items():
        event = decided_event(rig, flows[how][1], kind)
        assert (event["actor"], event["detail"].get("via")) == (actor, via), how
        assert rig.flow(flows[how][1])["decided_via"] == via  # kept with the decision (the record)
    # The review page's audit trail says it in words.
    shown = browser.get(f"{rig.ui_url}/flows/{flows['cli'][1]}", timeout=10).text
    trail = shown[shown.index('id="timeline"'):]
    assert "approved from the terminal</strong> by bob" in trail
    assert "approved in the review UI</strong> by bob" in browser.get(
        f"{rig.ui_url}/flows/{flows['ui'][1]}", timeout=10).text
    assert "rejected through the API</strong> by dave" in browser.get(
        f"{rig.ui_url}/flows/{flows['claims-slack'][1]}", timeout=10).text

    ids = ", ".join(f"'{flow_id}'" for _, flow_id in flows.values())

    def recorded() -> dict | None:
        rows = ask(rig.gateway.db, "/query", {"sql": f"SELECT flow_id, kind, detail FROM events "
                                                     f"WHERE flow_id IN ({ids}) AND kind IN ('approved', 'rejected')"})
        found = {flow_id: (kind, json.loads(detail) if isinstance(detail, str) else detail)
                 for flow_id, kind, detail in rows["rows"]}
        return found if len(found) == len(flows) else None

    found = rig.wait_for(recorded, timeout=10, what="the decided events in the recording")
    for how, (kind, _actor, via) in expected.items():
        assert (found[flows[how][1]][0], found[flows[how][1]][1].get("via")) == (kind, via), how
