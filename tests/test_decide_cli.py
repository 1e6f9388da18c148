"""`portcullis pending | show | approve | reject` against a real gateway, as a reviewer would.

The real CLI (the venv's ``portcullis`` script) runs as a subprocess with a reviewer's
token in ``$PORTCULLIS_TOKEN`` or a file; the gateway's review UI decides with the same
rules as its pages. Agents call through the proxy from threads (a held call blocks).
Each subprocess pays the CLI's start-up (seconds on a busy machine), so the checks of
refusals and messages call the same ``portcullis`` entry point (gateway.cli.main) in
this process instead, still against the real gateway.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main as gateway_main
from tests.support.review import ReviewRig

PORTCULLIS = Path(sys.executable).with_name("portcullis")
REFUND = {"amount": 250, "order": "A-7"}
OPTIONAL_COMMENT = """
# (column 0 keeps the rule in the rig's rules list)
  - name: notes
    match: {method: POST, path: /v1/notes}
    action: hold
    reason: "Notes are reviewed"
    reject_comment: optional
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("decide-cli"), confdir, extra_rules=OPTIONAL_COMMENT)
    yield rig
    rig.stop()


def _environment(rig: ReviewRig, reviewer: str | None, env: dict[str, str] | None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    environment.update({"PORTCULLIS_UI": rig.ui_url, **({"PORTCULLIS_TOKEN": rig.tokens[reviewer]} if reviewer else {}),
                        **(env or {})})
    return environment


def cli(rig: ReviewRig, *args: str, reviewer: str | None = "alice", env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """The real `portcullis` script, as a subprocess."""
    return subprocess.run([str(PORTCULLIS), *args], env=_environment(rig, reviewer, env), capture_output=True,
                          text=True, timeout=60)


def main(rig: ReviewRig, *args: str, reviewer: str | None = "alice", env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    """The same entry point, in this process (its environment swapped in for the call)."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(_environment(rig, reviewer, env))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = gateway_main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["portcullis", *args], code, out.getvalue(), err.getvalue())


def test_pending_and_show_tell_what_the_request_does_and_escape_what_the_agent_controls(rig: ReviewRig):
    path = "/v1/refunds?t=cli-show"
    # JSON escapes decode to real control characters: an ESC sequence, a BEL, a bidi override.
    call = rig.agent("POST", path, json={**REFUND, "note": "double charge \x1b[2J\x1b]0;pwned\x07 \u202etxt"},
                     headers={"X-Portcullis-Justification": "customer called twice"})
    hold = rig.wait_held(path)
    listed = cli(rig, "pending")
    assert listed.returncode == 0, listed.stderr
    (line,) = [x for x in listed.stdout.splitlines() if x.startswith(hold["flow_id"])]
    assert "billing-agent" in line and f"POST {rig.upstream.url(path)}" in line and "0/1 approvals" in line
    assert 'refunds: Refunds over $100 need a finance lead — amount=250, order="A-7", note=' in listed.stdout
    assert "\x1b" not in listed.stdout

    shown = main(rig, "show", hold["flow_id"])
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert '"note": "double charge \\u001b[2J\\u001b]0;pwned\\u0007 \\u202etxt"' in out  # JSON escapes, bidi too
    for expected in ("status:        pending", "justification: customer called twice", "identity:      billing-agent", "may decide:    finance-leads",
                     "you:           may decide", "grant:         up to 15m", '    "amount": 250', "SHA-256 "):
        assert expected in out, expected
    assert main(rig, "show", hold["flow_id"], reviewer="dave").stdout.count("may not decide: this hold needs") == 1
    assert main(rig, "reject", hold["flow_id"], "--comment", "done").returncode == 0
    call.result(timeout=10)

    # A body that is not JSON reaches the terminal with its control characters escaped.
    raw_path = "/v1/refunds?t=cli-raw"
    raw_call = rig.agent("POST", raw_path, data=b"note: \x1b[2J\x1b]0;pwned\x07 \xe2\x80\xaetxt",
                         headers={"Content-Type": "text/plain"})
    raw = rig.wait_held(raw_path)
    shown = main(rig, "show", raw["flow_id"]).stdout
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "note: \\x1b[2J\\x1b]0;pwned\\x07 \\u202etxt" in shown
    main(rig, "reject", raw["flow_id"], "--comment", "done")
    raw_call.result(timeout=10)


def test_approve_with_the_token_from_the_environment_forwards_the_request(rig: ReviewRig):
    path = "/v1/refunds?t=cli-approve"
    call = rig.agent("POST", path, json=REFUND)
    hold = rig.wait_held(path)
    done = main(rig, "approve", hold["flow_id"], "--comment", "checked with the customer", reviewer="bob")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"approved {hold['flow_id']}") and "forwarded now" in done.stdout
    response = call.result(timeout=10)
    assert response.status_code == 200 and len(rig.received(path)) == 1
    approved = next(e for e in rig.flow(hold["flow_id"])["events"] if e["kind"] == "approved")
    assert (approved["actor"], approved["detail"]["comment"]) == ("bob", "checked with the customer")
    again = main(rig, "approve", hold["flow_id"], reviewer="alice")
    assert again.returncode == 1 and "already_decided" in again.stderr


def test_reject_with_the_token_from_a_file_sends_the_comment_to_the_agent(rig: ReviewRig, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(rig.tokens["alice"] + "\n")
    token_file.chmod(0o600)
    path = "/v1/refunds?t=cli-reject"
    call = rig.agent("POST", path, json=REFUND)
    hold = rig.wait_held(path)
    done = cli(rig, "reject", hold["flow_id"], "--comment", "wrong order", "--token-file", str(token_file),
               reviewer=None)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "rejected" in done.stdout
    response = call.result(timeout=10)
    assert response.status_code == 403 and response.json()["comment"] == "wrong order"
    assert response.json()["reviewer"] == "alice"
    # The same through $PORTCULLIS_TOKEN_FILE; a token file others can read is warned about.
    token_file.chmod(0o644)
    listed = main(rig, "pending", reviewer=None, env={"PORTCULLIS_TOKEN_FILE": str(token_file)})
    assert listed.returncode == 0 and "readable by others" in listed.stderr


def test_the_same_rules_apply_and_failures_say_why(rig: ReviewRig):
    path = "/v1/payouts?t=cli-rules"
    call = rig.agent("POST", path, json={"amount": 9000})
    hold = rig.wait_held(path)
    outsider = main(rig, "approve", hold["flow_id"], reviewer="dave")
    assert outsider.returncode == 1 and "not_an_approver" in outsider.stderr
    first = main(rig, "approve", hold["flow_id"], reviewer="alice")
    assert first.returncode == 0 and "1 more needed" in first.stdout
    twice = main(rig, "approve", hold["flow_id"], reviewer="alice")
    assert twice.returncode == 1 and "already_approved" in twice.stderr
    blank = main(rig, "reject", hold["flow_id"], "--comment", " ", reviewer="bob")
    assert blank.returncode == 1 and "comment_required" in blank.stderr  # the gateway's book refuses it
    no_comment = main(rig, "reject", hold["flow_id"], reviewer="bob")  # the rule does not say optional
    assert no_comment.returncode == 1 and "comment_required" in no_comment.stderr
    assert main(rig, "reject", hold["flow_id"], "--comment", "not today", reviewer="bob").returncode == 0
    assert call.result(timeout=10).status_code == 403

    no_token = main(rig, "pending", reviewer=None)
    assert no_token.returncode == 2 and "PORTCULLIS_TOKEN" in no_token.stderr
    bad = main(rig, "pending", reviewer=None, env={"PORTCULLIS_TOKEN": "pcr_00000000_nope"})
    assert bad.returncode == 2 and "unauthenticated" in bad.stderr
    assert main(rig, "show", "no-such-flow").returncode == 2
    # A token is never a flag (it would land in shell history and ps).
    flag = cli(rig, "pending", "--token", rig.tokens["alice"], reviewer=None)
    assert flag.returncode == 2 and "unrecognized arguments" in flag.stderr
    assert rig.tokens["alice"].split("_", 2)[2] not in flag.stderr.split("unrecognized arguments")[0]
    down = main(rig, "pending", env={"PORTCULLIS_UI": "127.0.0.1:1"})
    assert down.returncode == 2 and "cannot reach the review UI" in down.stderr


def test_a_rule_that_makes_the_comment_optional_lets_reject_go_without_one(rig: ReviewRig):
    call = rig.agent("POST", "/v1/notes?t=cli-optional", json={"text": "hi"})
    hold = rig.wait_held("/v1/notes?t=cli-optional")
    done = main(rig, "reject", hold["flow_id"], reviewer="dave")
    assert done.returncode == 0, done.stderr
    assert call.result(timeout=10).status_code == 403
