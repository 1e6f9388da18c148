"""Fuzz the rules loader: whatever the file says, it loads or it is rejected with
RuleFileError, and every problem carries a usable line number. Nothing else escapes."""

from __future__ import annotations

import os
import re
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addons.core.rulefile import RuleFileError
from addons.policy.conditions import MATCH_KEYS, VALUE_OPS
from addons.policy.engine import (
    ACTIONS,
    CORE_RULE_KEYS,
    CORE_TOP_KEYS,
    RULE_FIELDS,
    TOP_LEVEL_FIELDS,
    compile_policy,
)

VALID = """\
version: 1
default: allow
rules:
  - name: no-tables
    match: {method: [DELETE, PUT], path: "/v1/tables/**", host: "*.example.com"}
    action: block
    reason: "no"
  - name: refunds
    match:
      path: /v1/refunds
      json: {"$.amount": {gt: 1000}, "$.note": {regex: "(?i)urgent"}}
      query: {dry_run: "false"}
      headers: {x-env: "prod*"}
    action: hold
"""

# Extensions register their keys on import (tests/conftest.py imports addons.schema).

#: PORTCULLIS_FUZZ_EXAMPLES=20000 for a long run; CI keeps it short.
FUZZ = settings(max_examples=int(os.environ.get("PORTCULLIS_FUZZ_EXAMPLES", "100")), deadline=None, suppress_health_check=list(HealthCheck))


def check(text: str) -> None:
    """The property: a Policy, or a RuleFileError whose problems all point into the file."""
    try:
        compile_policy(text, "fuzz.yaml")
    except RuleFileError as exc:
        assert exc.problems, "a rejection must say why"
        # YAML breaks lines at \r, \x85, \u2028 and \u2029 as well as \n.
        last_line = len(re.split("\r\n|[\r\n\x85\u2028\u2029]", text)) + 1
        for problem in exc.problems:
            assert 1 <= problem.line <= last_line, problem
            assert problem.column >= 1, problem
            assert problem.message, problem
            assert problem.file == "fuzz.yaml"


def _keys() -> st.SearchStrategy[str]:
    known = [*CORE_TOP_KEYS, *CORE_RULE_KEYS, *MATCH_KEYS, *VALUE_OPS, *RULE_FIELDS,
             *TOP_LEVEL_FIELDS, "$.amount", "$..ssn", "$[", "with", "keep_last", "detect",
             "address", "ca_bundle", "verify", "reviewers", "timeout"]
    return st.sampled_from(known) | st.text(string.printable, max_size=8)


_scalars = (
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.sampled_from([*ACTIONS, "/v1/**", "*.example.com", "GET", "$.a", "(?i)x", "[", "~b x"])
    | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys(), children, max_size=5),
    max_leaves=25,
)


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text(text):
    check(text)


@FUZZ
@given(st.dictionaries(_keys(), _values, max_size=6), st.lists(st.dictionaries(_keys(), _values, max_size=6), max_size=4))
def test_arbitrary_structures(top, rules):
    document = {"version": 1, **top, "rules": rules}
    check(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))


@FUZZ
@given(st.data())
def test_mutated_valid_file(data):
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["delete", "insert", "duplicate-line"]))
        if edit == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 10)):]
        elif edit == "insert":
            text = text[:at] + data.draw(st.text(string.printable + "{}[]:-&*!|>'\"%@`\t", max_size=6)) + text[at:]
        else:
            lines = text.split("\n")
            i = data.draw(st.integers(0, len(lines) - 1))
            text = "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    check(text)


def test_the_unmutated_file_loads():
    policy = compile_policy(VALID, "fuzz.yaml")
    assert [r.name for r in policy.rules] == ["no-tables", "refunds"]
