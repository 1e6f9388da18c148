"""YAML anchors and aliases are refused in rules files, by `portcullis check` and by hot reload.

A recursive alias used to kill the hot-reload task (RecursionError in the builder) with
no log, and a billion-laughs file took `portcullis check` past 3 GB. Both must now be a
clean problem naming file:line:column, in bounded memory, and a running gateway must go
on applying the next valid edit.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from addons.core.rulefile import RuleFileError, parse
from gateway.settings import PROJECT_ROOT

RECURSIVE = """\
version: 1
rules:
  - name: loop
    match: &m {path: /a, any: [*m]}
    action: block
"""

#: Nine levels of ten aliases: 10^9 leaves once expanded, a few hundred bytes on disk.
BILLION_LAUGHS = "version: 1\nlol0: &lol0 [lol]\n" + "".join(
    f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 10)}]\n" for i in range(1, 10)
) + "rules: []\n"

BLOCK_A = """\
version: 1
rules:
  - name: block-a
    match: {path: /a}
    action: block
"""
BLOCK_B = BLOCK_A.replace("block-a", "block-b").replace("/a}", "/b}")

MEMORY_LIMIT = 512 * 1024 * 1024


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def check(path) -> subprocess.CompletedProcess[str]:
    """`portcullis check` as a subprocess that cannot use more than 512 MB."""
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory)


@pytest.mark.parametrize(("text", "line", "column", "anchor"), [
    (RECURSIVE, 4, 12, "&m"),
    (BILLION_LAUGHS, 2, 7, "&lol0"),
], ids=["recursive-alias", "billion-laughs"])
def test_check_refuses_anchors_cleanly_in_bounded_memory(tmp_path, text, line, column, anchor):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    started = time.monotonic()
    result = check(path)
    assert result.returncode == 1, result.stderr
    assert f"{path}:{line}:{column}: YAML anchors ({anchor}) are not allowed" in result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert time.monotonic() - started < 30


def test_an_alias_without_its_anchor_in_view_is_refused_too():
    # Only reachable if an anchor slipped through; the composer checks both events.
    with pytest.raises(RuleFileError, match=r"f\.yaml:1:4: YAML anchors \(&x\)"):
        parse("a: &x 1\nb: *x\n", "f.yaml")
    with pytest.raises(RuleFileError, match=r"f\.yaml:2:\d+: .*not allowed"):
        parse("a: 1\nb: [&y 2, *y]\n", "f.yaml")


def test_strings_that_look_like_anchors_are_plain_values():
    data, _ = parse("a: ['&x', '*y', 'a&b*c']\n", "f.yaml")
    assert data == {"a": ["&x", "*y", "a&b*c"]}


def status(url: str) -> int:
    return requests.get(url, timeout=10).status_code


def wait_for_status(url: str, expected: int, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while status(url) != expected:
        assert time.monotonic() < deadline, f"{url} did not become {expected} within {within}s"
        time.sleep(0.05)


def test_hot_reload_refuses_aliases_and_keeps_applying_valid_edits(start_gateway, use_gateway, upstream):
    gateway = start_gateway(BLOCK_A)
    use_gateway(gateway)
    assert (status(upstream.url("/a")), status(upstream.url("/b"))) == (403, 200)

    in_force = (403, 200)
    for bad, where, valid in ((RECURSIVE, ":4:12:", BLOCK_B), (BILLION_LAUGHS, ":2:7:", BLOCK_A)):
        gateway.rules.write_text(bad)
        gateway.wait_for_output(f"{gateway.rules}{where} YAML anchors", timeout=5)
        assert (status(upstream.url("/a")), status(upstream.url("/b"))) == in_force  # last good rules
        # ... and the watcher is still alive: the next valid edit applies.
        gateway.rules.write_text(valid)
        in_force = (200, 403) if valid is BLOCK_B else (403, 200)
        wait_for_status(upstream.url("/b" if valid is BLOCK_B else "/a"), 403)
        assert (status(upstream.url("/a")), status(upstream.url("/b"))) == in_force
    assert "Traceback" not in gateway.output


def test_identities_file_refuses_aliases(tmp_path):
    from addons.identity.addon import load_identities_file

    path = tmp_path / "identities.yaml"
    path.write_text(textwrap.dedent("""\
        identities:
          - &agent {name: a, token_sha256: "%s"}
          - *agent
    """) % ("0" * 64))
    with pytest.raises(RuleFileError, match=rf"{path}:2:5: YAML anchors \(&agent\)"):
        load_identities_file(path)


def test_identity_add_refuses_a_file_with_aliases_instead_of_looping(tmp_path):
    """`portcullis identity add` walks the file's nodes to find the end of the list: a
    recursive alias made that walk endless."""
    path = tmp_path / "identities.yaml"
    original = "identities: &ids\n  - name: a\n    token_sha256: x\n    more: *ids\n"
    path.write_text(original)
    result = subprocess.run([sys.executable, "-m", "gateway", "identity", "add", "b", "--file", str(path)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
                            preexec_fn=_limit_memory)
    assert result.returncode != 0
    assert "YAML anchors (&ids) are not allowed" in result.stderr
    assert path.read_text() == original


def test_a_key_with_an_unknown_tag_is_a_problem_at_its_position():
    # Found by tests/test_rules_fuzz.py: `{!gt: 1000}` raised PyYAML's ConstructorError
    # out of the loader instead of naming the place.
    text = 'version: 1\nrules:\n  - name: big\n    match: {json: {"$.amount": {!gt: 1000}}}\n    action: block\n'
    with pytest.raises(RuleFileError) as caught:
        parse(text, "rules.yaml")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.column) == ("rules.yaml", 4, 33)
    assert problem.field == 'rules[0].match.json.$.amount'
    assert "cannot read key" in problem.message and "!gt" in problem.message
