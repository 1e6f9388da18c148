"""`portcullis identity add`: a token printed once, only its hash stored, the file kept intact."""

from __future__ import annotations

import contextlib
import hashlib
import io
import subprocess
import textwrap
from pathlib import Path

import yaml

from addons.identity.addon import load_identities_file
from addons.policy.engine import load_policy
from gateway.cli import main
from gateway.commands.identity import add_entry
from tests.support import cli_run


def add(path: Path, name: str, groups: str = "") -> subprocess.CompletedProcess[str]:
    """The command in-process (the CLI start-up costs a second); one test runs it for real."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["identity", "add", name, "--groups", groups, "--file", str(path)])
    return subprocess.CompletedProcess([], code, out.getvalue(), err.getvalue())


def test_the_real_command_prints_only_the_token_on_stdout(tmp_path):
    path = tmp_path / "identities.yaml"
    result = cli_run.portcullis("identity", "add", "x", "--file", str(path), timeout=30)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    digest = hashlib.sha256(line.encode()).hexdigest()
    assert load_identities_file(path)["identities"][0].token_sha256 == digest


def test_add_creates_the_file_and_stores_only_the_hash(tmp_path):
    path = tmp_path / "identities.yaml"
    result = add(path, "billing-agent", "agents,billing")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 40 and "\n" not in token
    assert "shown once" in result.stderr
    assert token not in path.read_text()
    (identity,) = load_identities_file(path)["identities"]
    assert identity.name == "billing-agent"
    assert identity.groups == {"agents", "billing"}
    assert identity.token_sha256 == hashlib.sha256(token.encode()).hexdigest()


def test_two_adds_give_different_tokens_and_keep_comments(tmp_path):
    path = tmp_path / "identities.yaml"
    path.write_text("# who may call\nidentities:   # agents\n")
    first, second = add(path, "a"), add(path, "b", "ci")
    assert first.returncode == second.returncode == 0
    assert first.stdout != second.stdout
    text = path.read_text()
    assert text.startswith("# who may call\nidentities:   # agents\n")
    assert [i.name for i in load_identities_file(path)["identities"]] == ["a", "b"]


def test_duplicate_name_is_refused_and_the_file_unchanged(tmp_path):
    path = tmp_path / "identities.yaml"
    assert add(path, "a").returncode == 0
    before = path.read_text()
    result = add(path, "a")
    assert result.returncode == 1
    assert "duplicate identity 'a'" in result.stderr
    assert result.stdout == ""
    assert path.read_text() == before


def test_invalid_names_are_refused(tmp_path):
    result = add(tmp_path / "i.yaml", "has:colon")
    assert result.returncode == 1
    assert "invalid name" in result.stderr
    assert not (tmp_path / "i.yaml").exists()


def test_add_into_a_rules_file_keeps_rules_and_comments(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        # agents
        identities:
          - name: existing
            groups: [x]   # first
            token_sha256: "%s"
          # more below
        rules:
          - name: r
            match: {groups: [billing]}
            action: block
    """ % ("0" * 64)))
    result = add(path, "new-one", "billing")
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert "groups: [x]   # first" in text and "# more below" in text
    policy = load_policy(path)
    assert [i.name for i in policy.settings["identities"]] == ["existing", "new-one"]
    assert [r.name for r in policy.rules] == ["r"]


def test_add_entry_handles_empty_and_missing_lists():
    entry = ["- name: x", "  groups: []", f'  token_sha256: "{"a" * 64}"']
    for text in ("", "identities: []\n", "identities:\njwt: null\n", "version: 1"):
        data = yaml.safe_load(add_entry(text, entry))
        assert data["identities"] == [{"name": "x", "groups": [], "token_sha256": "a" * 64}], text
