"""`match` blocks: malformed conditions are refused naming the problem, and structured
`eq`/`ne` operands (lists, mappings) compare as JSON values (true is not 1, 1 is 1.0),
a value of another type being an evaluation error, not silently unequal. Also typed
query conditions on a query string the policy cannot read."""

from __future__ import annotations

import json
import textwrap

import pytest

from addons.core.rulefile import RuleFileError
from addons.core.synthetic import make_flow
from addons.policy.conditions import EvaluationError, Glob, RequestView
from addons.policy.engine import compile_policy

ONE_RULE = """\
version: 1
default: allow
rules:
  - name: r
    match: {match}
    action: block
"""


def policy(match: str):
    return compile_policy(textwrap.dedent(ONE_RULE.format(match=match)), "test.yaml")


def decide(p, url: str = "http://api.example.com/", body: object = None) -> str:
    raw = json.dumps(body).encode() if body is not None else b""
    flow = make_flow("POST", url, {"Content-Type": "application/json"} if body is not None else {}, raw)
    return p.evaluate(RequestView(flow, "anonymous", frozenset())).action


@pytest.mark.parametrize(("match", "message"), [
    ("[host, path]", "match must be a mapping of conditions"),
    ('{json: {"$.a": {}}}', "empty condition: use one of"),
    ('{json: {"$.a": {in: []}}}', "in needs a non-empty list of values"),
    ('{json: {"$.a": {in: 5}}}', "in needs a non-empty list of values"),
    ('{json: {"$.a": {exists: "yes"}}}', "exists needs true or false"),
    ("{host: []}", "must not be an empty list"),
    ("{headers: {}}", "expected a mapping of name -> pattern"),
    ("{headers: {x-a: [1]}}", "expected a string pattern"),
    ("{headers: {x-a: true}}", "expected a string pattern"),
    ("{path: v1/x}", "a path pattern must start with '/'"),
    ("{path: [/ok, v1/x]}", "a path pattern must start with '/'"),
    ("{query: {}}", "expected a mapping of name -> glob or typed condition"),
    ("{json: {}}", "expected a mapping of JSONPath -> condition"),
    ("{json: [a]}", "expected a mapping of JSONPath -> condition"),
    ("{filter: 5}", "a filter must be a mitmproxy filter expression string"),
])
def test_malformed_conditions_are_refused(match: str, message: str) -> None:
    with pytest.raises(RuleFileError) as err:
        policy(match)
    assert message in str(err.value)
    assert str(err.value).startswith("test.yaml:")


def test_a_list_operand_compares_element_by_element_as_json() -> None:
    p = policy('{json: {"$.tags": {eq: [a, 1, true]}}}')
    assert decide(p, body={"tags": ["a", 1, True]}) == "block"
    assert decide(p, body={"tags": ["a", 1.0, True]}) == "block"  # 1 is 1.0
    assert decide(p, body={"tags": ["a", True, True]}) == "allow"  # true is not 1
    assert decide(p, body={"tags": ["a", 1, 1]}) == "allow"  # nor 1 true
    assert decide(p, body={"tags": ["a", 1]}) == "allow"
    assert decide(p, body={"tags": ["a", 1, True, "x"]}) == "allow"


def test_a_mapping_operand_needs_the_same_keys_and_values() -> None:
    p = policy('{json: {"$.scope": {eq: {team: billing, level: 2}}}}')
    assert decide(p, body={"scope": {"level": 2, "team": "billing"}}) == "block"
    assert decide(p, body={"scope": {"level": 2, "team": "billing", "extra": 1}}) == "allow"
    assert decide(p, body={"scope": {"level": 3, "team": "billing"}}) == "allow"
    assert decide(p, body={"scope": {"level": [2], "team": "billing"}}) == "allow"


def test_a_value_of_another_type_than_a_structured_operand_is_an_error() -> None:
    p = policy('{json: {"$.tags": {eq: [a]}}}')
    with pytest.raises(EvaluationError, match="eq needs an array, got a string"):
        decide(p, body={"tags": "a"})
    ne = policy('{json: {"$.scope": {ne: {team: billing}}}}')
    with pytest.raises(EvaluationError, match="ne needs an object, got an array"):
        decide(ne, body={"scope": ["team", "billing"]})
    assert decide(ne, body={"scope": {"team": "ops"}}) == "block"


def test_a_typed_query_condition_on_an_unreadable_query_string_is_an_error() -> None:
    p = policy("{query: {dry_run: {eq: false}}}")
    assert decide(p, "http://api.example.com/x?dry_run=false") == "block"
    deep = "a" + "[b]" * 40 + "=1"
    with pytest.raises(EvaluationError, match="query string: field name nested deeper than"):
        decide(p, f"http://api.example.com/x?{deep}&dry_run=false")


def test_a_glob_shows_its_pattern() -> None:
    assert repr(Glob("*.example.com")) == "Glob('*.example.com')"
