"""The reviewers file and `portcullis reviewer add`: only hashes at rest, constant-time checks."""

from __future__ import annotations

import pytest

from gateway.cli import main
from review_ui.reviewers import ReviewersError, ReviewerStore, add_reviewer, verify_secret


def test_add_then_authenticate_by_password_and_token(tmp_path):
    path = tmp_path / "reviewers.yaml"
    password, token = add_reviewer(path, "alice", ["finance-leads"], "a-long-password")
    assert password == "a-long-password" and token.startswith("pcr_")
    text = path.read_text()
    assert "a-long-password" not in text and token.split("_", 2)[2] not in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    store = ReviewerStore(path)
    assert store.authenticate("alice", "a-long-password").groups == frozenset({"finance-leads"})
    assert store.authenticate("alice", "wrong") is None
    assert store.authenticate("mallory", "a-long-password") is None
    assert store.by_token(token).name == "alice"
    assert store.by_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.by_token("pcr_zz_nope") is None and store.by_token("garbage") is None


def test_file_changes_apply_without_restart_and_revoke_cached_tokens(tmp_path):
    path = tmp_path / "reviewers.yaml"
    _, token = add_reviewer(path, "alice", ["a"], "a-long-password")
    store = ReviewerStore(path)
    assert store.by_token(token) is not None  # now cached
    add_reviewer(path, "bob", ["b"], "another-password")
    assert store.get("bob") is not None
    _, new_token = add_reviewer(path, "alice", ["a"], "a-new-password", replace=True)
    assert store.by_token(token) is None and store.by_token(new_token).name == "alice"


def test_duplicates_need_replace(tmp_path):
    path = tmp_path / "reviewers.yaml"
    add_reviewer(path, "alice", [], "a-long-password", token=False)
    with pytest.raises(ReviewersError, match="already exists"):
        add_reviewer(path, "alice", [], "a-long-password")


def test_verify_secret_rejects_malformed_hashes():
    assert not verify_secret("x", "md5$abc")
    assert not verify_secret("x", "scrypt$notanumber$8$1$AA==$AA==")


def test_cli_generates_password_and_token_once(tmp_path, capsys):
    # In process (the command's start-up costs a second of CPU): the same main() the
    # console script calls, its stdin not a terminal (pytest's), as with stdin=/dev/null.
    path = tmp_path / "reviewers.yaml"
    code = main(["reviewer", "add", "carol", "--groups", "oncall, security", "--file", str(path)])
    run = capsys.readouterr()
    assert code == 0, run.err
    lines = dict(line.split(": ", 1) for line in run.out.splitlines())
    store = ReviewerStore(path)
    assert store.authenticate("carol", lines["password"]).groups == frozenset({"oncall", "security"})
    assert store.by_token(lines["api token"]).name == "carol"
    again = main(["reviewer", "add", "carol", "--file", str(path)])
    assert again == 1 and "already exists" in capsys.readouterr().err


def test_anchors_and_aliases_are_refused_with_their_position():
    from review_ui.reviewers import parse_reviewers

    laughs = "reviewers:\n  - name: x\n    groups: &g [a, a]\n  - name: y\n    groups: [*g, *g]\n"
    with pytest.raises(ReviewersError, match=r"r\.yaml:3:13: YAML anchors \(&g\) are not allowed"):
        parse_reviewers(laughs, "r.yaml")


def test_a_rejected_edit_is_logged_and_the_last_good_reviewers_stay(tmp_path, caplog):
    path = tmp_path / "reviewers.yaml"
    add_reviewer(path, "alice", ["a"], "a-long-password", token=False)
    store = ReviewerStore(path)
    path.write_text("reviewers:\n- &x {name: bob}\n- *x\n")
    with caplog.at_level("ERROR", logger="portcullis.review_ui"):
        assert store.get("alice") is not None and store.get("bob") is None
        store.get("alice")
    assert caplog.text.count(f"reviewers file {path} edit rejected") == 1  # once per edit
    assert "YAML anchors (&x)" in caplog.text
