"""Rule regexes run on RE2 (linear time): a backtracking pattern cannot stall the gateway,
and patterns RE2 cannot take are refused at load time naming file:line:field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from addons.core.rulefile import RuleFileError
from addons.core.synthetic import make_flow
from addons.policy.conditions import Glob, RequestView
from addons.policy.engine import compile_policy
from gateway.settings import PROJECT_ROOT

EVIL = r"^([a-zA-Z0-9]+\.?)+@corp\.example$"

RULES = f"""\
version: 1
default: allow
rules:
  - name: corp-mail-only
    match: {{method: POST, json: {{"$.to": {{regex: '{EVIL}'}}}}}}
    action: block
"""


@pytest.mark.parametrize(("content_type", "body"), [
    # The 28 bytes (a form is read into the same fields), and the same text in JSON.
    ("application/x-www-form-urlencoded", b"to=" + b"a" * 24 + b"!"),
    ("application/json", b'{"to":"' + b"a" * 24 + b'!"}'),
])
def test_a_backtracking_pattern_does_not_stall(content_type, body):
    # Nested quantifier and no match: Python's re needs 2**24 steps (seconds); RE2 is linear.
    policy = compile_policy(RULES)
    flow = make_flow("POST", "http://mail.test/send", {"Content-Type": content_type}, body)
    started = time.perf_counter()
    assert policy.evaluate(RequestView(flow)).action == "allow"
    assert time.perf_counter() - started < 0.5  # a hang check, not a performance target


def test_the_rule_still_matches_what_it_should():
    policy = compile_policy(RULES)
    flow = make_flow("POST", "http://mail.test/send", {"Content-Type": "application/json"},
                     b'{"to": "first.last@corp.example"}')
    assert policy.evaluate(RequestView(flow)).action == "block"


@pytest.mark.parametrize("pattern", [r"(a)\1", r"foo(?=bar)", r"(?<!x)y"])
def test_patterns_re2_cannot_take_are_refused_with_their_position(pattern):
    text = textwrap.dedent(f"""\
        version: 1
        rules:
          - name: r
            match:
              json:
                "$.a": {{regex: '{pattern}'}}
    """)
    with pytest.raises(RuleFileError) as info:
        compile_policy(text, "mine.yaml")
    message = str(info.value)
    assert "mine.yaml:6:" in message
    assert "rules[0].match.json.$.a.regex" in message
    assert "RE2" in message


def test_portcullis_check_names_the_pattern(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES + "  - name: backref\n"
                            "    match: {json: {\"$.b\": {regex: '(x)\\1'}}}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{path}:8:" in output and "rules[1].match.json.$.b.regex" in output
    assert "RE2" in output
    assert "re2.cc" not in output  # RE2's own stderr logging is off


def test_globs_with_several_wildcards_are_linear_too():
    glob = Glob("/**a**a**a**a**b", path=True)
    started = time.perf_counter()
    assert not glob.matches("/" + "a" * 5000)
    assert time.perf_counter() - started < 0.5
    assert glob.matches("/xaaaab") and Glob("*.example.*").matches("api.example.com")
    assert Glob("/v1/TABLES/**", path=True, ignore_case=True).matches("/v1/tables/x")
