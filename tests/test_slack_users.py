"""Slack member ids in reviewers.yaml: how a Slack click is mapped to a reviewer.

``portcullis reviewer add --slack-user`` stores the id (checked, one reviewer per id);
``--replace`` keeps it; the store finds the reviewer by it and re-reads an edited file.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from gateway.cli import main
from review_ui.reviewers import ReviewersError, ReviewerStore, add_reviewer, parse_reviewers


def reviewer_add(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["reviewer", "add", *args])
    return code, err.getvalue()


def test_reviewer_add_stores_the_slack_member_id_and_the_store_finds_it(tmp_path: Path):
    file = tmp_path / "reviewers.yaml"
    assert reviewer_add("alice", "--groups", "finance-leads", "--slack-user", "U0ALICE1", "--file", str(file))[0] == 0
    assert reviewer_add("bob", "--file", str(file))[0] == 0
    store = ReviewerStore(file)
    assert store.by_slack_user("U0ALICE1").name == "alice"
    assert store.by_slack_user("U0BOB") is None and store.by_slack_user("") is None
    # --replace keeps the id; a second reviewer cannot take it.
    assert reviewer_add("alice", "--groups", "finance-leads", "--replace", "--file", str(file))[0] == 0
    assert parse_reviewers(file.read_text())["alice"].slack_user == "U0ALICE1"
    code, err = reviewer_add("bob", "--replace", "--slack-user", "U0ALICE1", "--file", str(file))
    assert code == 1 and "already alice's" in err
    code, err = reviewer_add("carol", "--slack-user", "alice@example.com", "--file", str(file))
    assert code == 1 and "Slack member id" in err
    assert set(parse_reviewers(file.read_text())) == {"alice", "bob"}  # nothing half-written
    # An edit by hand is picked up: the click maps to whoever has the id now.
    file.write_text(file.read_text().replace("U0ALICE1", "U0ALICE2"))
    assert store.by_slack_user("U0ALICE1") is None and store.by_slack_user("U0ALICE2").name == "alice"


@pytest.mark.parametrize("value", ["u0lower", "C0CHANNEL", "U", 12345, "U0 SPACE"])
def test_a_slack_user_must_look_like_a_member_id(value):
    with pytest.raises(ReviewersError, match="Slack member id"):
        parse_reviewers(f"reviewers: [{{name: a, slack_user: {value!r}}}]")


def test_add_reviewer_refuses_an_id_it_could_not_read_back(tmp_path: Path):
    with pytest.raises(ReviewersError):
        add_reviewer(tmp_path / "r.yaml", "x", [], "a-long-password", slack_user="nope")
    assert not (tmp_path / "r.yaml").exists()
