"""Rule evaluation: every match key, precedence, the default, and the host index."""

from __future__ import annotations

import json
import textwrap

import pytest

from addons.core.rulefile import RuleFileError
from addons.core.synthetic import make_flow
from addons.policy.conditions import EvaluationError, RequestView
from addons.policy.engine import compile_policy


def policy(text: str):
    return compile_policy(textwrap.dedent(text), "test.yaml")


def decide(p, method="GET", url="http://api.example.com/", body=None, headers=None,
           identity="anonymous", groups=()):
    raw = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else (body or b"")
    flow = make_flow(method, url, headers or {}, raw)
    return p.evaluate(RequestView(flow, identity, groups))


ONE_RULE = """\
version: 1
default: allow
rules:
  - name: r
    match: {match}
    action: block
"""


@pytest.mark.parametrize(
    ("match", "hit", "miss"),
    [
        ('{host: "*.prod.example.com"}', {"url": "http://db.prod.example.com/"},
         {"url": "http://prod.example.com/"}),
        ('{host: ["a.com", "b.com"]}', {"url": "http://B.COM./x"}, {"url": "http://c.com/"}),
        ("{method: [delete, PUT]}", {"method": "DELETE"}, {"method": "GET"}),
        ("{port: [8443]}", {"url": "https://api.example.com:8443/"}, {"url": "https://api.example.com/"}),
        ('{path: "/v1/tables/**"}', {"url": "http://h/v1/tables"}, {"url": "http://h/v1/tablesx"}),
        ('{path: "/v1/*/rows"}', {"url": "http://h/v1/t/rows"}, {"url": "http://h/v1/a/b/rows"}),
        ('{query: {dry_run: "false"}}', {"url": "http://h/?dry_run=false"}, {"url": "http://h/?dry_run=true"}),
        ('{headers: {content-type: "application/json*"}}',
         {"headers": {"Content-Type": "Application/JSON; charset=utf-8"}}, {"headers": {"Content-Type": "text/plain"}}),
        ('{json: {"$.amount": {gt: 1000}}}', {"body": {"amount": 1000.5}}, {"body": {"amount": 1000}}),
        ('{json: {"$.amount": {lte: 5, gte: 1}}}', {"body": {"amount": 3}}, {"body": {"amount": 6}}),
        ('{json: {"$..statement": {regex: "(?i)drop"}}}', {"body": {"q": [{"statement": "DROP x"}]}},
         {"body": {"statement": "select"}}),
        ('{json: {"$.mode": {in: [a, b]}}}', {"body": {"mode": "b"}}, {"body": {"mode": "c"}}),
        ('{json: {"$.mode": {ne: safe}}}', {"body": {"mode": "x"}}, {"body": {"mode": "safe"}}),
        # 1 is true to pydantic & co.: typed conditions read it so (issue 12); it used to miss.
        ('{json: {"$.force": true}}', {"body": {"force": 1}}, {"body": {"force": False}}),
        ('{json: {"$.force": {exists: true}}}', {"body": {"force": None}}, {"body": {}}),
        ('{json: {"$.force": {exists: false}}}', {"body": {}}, {"body": {"force": 0}}),
        ("{json: {\"$.users[?(@.role=='admin')].name\": {eq: root}}}",
         {"body": {"users": [{"role": "admin", "name": "root"}]}},
         {"body": {"users": [{"role": "dev", "name": "root"}]}}),
        ('{filter: "~m POST & ~d example.com"}', {"method": "POST"}, {"method": "PUT"}),
        ("{identity: [billing-*]}", {"identity": "billing-agent"}, {"identity": "ci-bot"}),
        ("{groups: [finance]}", {"groups": ["x", "finance"]}, {"groups": ["x"]}),
    ],
)
def test_each_match_key(match, hit, miss):
    p = policy(ONE_RULE.format(match=match))
    assert decide(p, **hit).action == "block"
    assert decide(p, **miss).action == "allow"


def test_json_conditions_read_forms_and_refuse_untyped_bodies():
    # Issue 12: a form is read into the same fields (it used to be "not JSON" and never
    # match), an empty body has no fields, and a body of unknown type is refused.
    p = policy(ONE_RULE.format(match='{json: {"$.a": {exists: false}}}'))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert decide(p, body=b"a=1", headers=form).action == "allow"
    assert decide(p, body=b"b=1", headers=form).action == "block"
    assert decide(p, body=b"").action == "block"
    assert decide(p, body={"b": 1}).action == "block"
    with pytest.raises(EvaluationError, match="cannot read fields"):
        decide(p, body=b"a=1")


def test_strongest_action_wins_and_first_rule_of_that_strength_decides():
    p = policy("""
        version: 1
        default: block
        rules:
          - {name: tag, match: {path: /x}}
          - {name: allow-x, match: {path: /x}, action: allow}
          - {name: hold-x, match: {path: /x}, action: hold}
          - {name: block-x-1, match: {path: /x}, action: block, reason: first}
          - {name: block-x-2, match: {path: /x}, action: block, reason: second}
          - {name: allow-y, match: {path: /y}, action: allow}
          - {name: tag-z, match: {path: /z}}
    """)
    v = decide(p, url="http://h/x")
    assert (v.action, v.rule.name, v.reason) == ("block", "block-x-1", "first")
    assert v.rule_names == ["tag", "allow-x", "hold-x", "block-x-1", "block-x-2"]
    assert decide(p, url="http://h/y").action == "allow"
    z = decide(p, url="http://h/z")
    assert (z.action, z.rule, z.rule_names) == ("block", None, ["tag-z"])


def test_hold_beats_allow():
    p = policy("""
        version: 1
        rules:
          - {name: a, match: {}, action: allow}
          - {name: h, match: {method: POST}, action: hold}
    """)
    assert decide(p, method="POST").action == "hold"
    assert decide(p).action == "allow"


def test_index_gives_the_same_answers_as_scanning_every_rule():
    rules = ["version: 1", "rules:"]
    for i in range(300):
        host = ["h{i}.example.com", "*.z{i}.example.com", "x{i}-*.example.com"][i % 3].format(i=i)
        rules.append(f'  - {{name: r{i}, match: {{host: "{host}", method: {["GET", "POST"][i % 2]}}}, action: block}}')
    rules.append("  - {name: everywhere, match: {path: /all}, action: block}")
    p = compile_policy("\n".join(rules), "many.yaml")
    assert len(p.index.always) == 101  # the x*- globs and the host-less rule
    cases = [("GET", "http://h0.example.com/"), ("POST", "http://h0.example.com/"),
             ("POST", "http://a.b.z1.example.com/"), ("GET", "http://x2-foo.example.com/"),
             ("GET", "http://nothing.example.com/all"), ("GET", "http://nothing.example.com/")]
    for method, url in cases:
        view = RequestView(make_flow(method, url))
        brute = [r.name for r in p.rules if r.match.holds(view)]
        assert decide(p, method, url).rule_names == brute


def test_unknown_keys_everywhere_are_errors():
    with pytest.raises(RuleFileError) as err:
        policy("""
            version: 1
            colour: red
            rules:
              - {name: a, match: {}, when: now}
        """)
    text = str(err.value)
    assert "test.yaml:3:1: colour: unknown top-level key 'colour'" in text
    assert "test.yaml:5:26: rules[0].when: unknown rule key 'when'" in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rules:\n  - {name: a, match: {}}", "version: version must be 1"),
        ("version: 1\nrules: {a: 1}", "rules: rules must be a list"),
        ("version: 1\nrules:\n  - {name: a, match: {}}\n  - {name: a, match: {}}", "duplicate rule name 'a'"),
        ("version: 1\nrules:\n  - {match: {}}", "every rule needs a non-empty string name"),
        ("version: 1\nrules:\n  - {name: a}", "every rule needs a match block"),
        ("version: 1\nrules:\n  - {name: a, match: {path: '/x'}, match: {}}", "duplicate key 'match'"),
        ("version: 1\nrules:\n  - {name: a, match: {json: {'$.[': 1}}}", "invalid JSONPath"),
        ("version: 1\nrules:\n  - {name: a, match: {json: {'$.a': {regex: '('}}}}", "invalid regex"),
        ("version: 1\nrules:\n  - {name: a, match: {json: {'$.a': {gt: x}}}}", "gt needs a number"),
        ("version: 1\nrules:\n  - {name: a, match: {filter: '~q ~~'}}", "invalid mitmproxy filter"),
        ("version: 1\nrules:\n  - {name: a, match: {port: 70000}}", "expected a port number"),
        ("version: 1\ndefault: maybe", "default must be one of"),
        ("version: 1\nrules: [\n", "YAML syntax error"),
        ("- just\n- a list", "a rules file must be a mapping"),
    ],
)
def test_invalid_files_are_rejected_with_a_position(body, message):
    with pytest.raises(RuleFileError) as err:
        policy(body)
    assert message in str(err.value)
    assert all(p.line >= 1 and p.column >= 1 for p in err.value.problems)
    assert str(err.value).startswith("test.yaml:")
