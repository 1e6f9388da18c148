"""Compiling mask, mask_request and on_unmaskable: every form, and precise errors."""

from __future__ import annotations

import textwrap

import pytest

from addons.core.rulefile import RuleFileError
from addons.masking.spec import FIXED, HASH, KEEP_LAST, NULL, REMOVE, Replacement
from addons.policy.engine import compile_policy


def rules(masks: str, extra: str = "") -> str:
    return "version: 1\nrules:\n  - name: r\n    match: {}\n    mask:\n" + textwrap.indent(
        textwrap.dedent(masks), "      ") + extra


def test_every_form_compiles():
    policy = compile_policy(rules("""\
        - "$..ssn"
        - {path: "$..card_number", keep_last: 4}
        - {path: "$..email", with: hash}
        - {path: "$..dob", with: null}
        - {path: "$..x", with: "null"}
        - {path: "$..internal", with: remove}
        - {path: "$..note", with: "<redacted>"}
        - {path: "$.items[*].notes", detect: [email, phone, card, ssn, iban, secret]}
        - {detect: secret}
        - {header: "X-Internal-Token"}
        - {header: "x-session", with: remove}
        - {path: "$.users[?(@.role=='admin')].token"}
    """, "    mask_request:\n      - {path: \"$.messages[*].content\", detect: [email]}\n    on_unmaskable: pass\n"))
    (rule,) = policy.rules
    masks = rule.extensions["mask"]
    assert [m.replacement for m in masks[:7]] == [
        Replacement(), Replacement(KEEP_LAST, keep=4), Replacement(HASH), Replacement(NULL),
        Replacement(NULL), Replacement(REMOVE), Replacement(FIXED, text="<redacted>"),
    ]
    assert masks[0].selector.expression == "$..ssn"
    assert masks[7].detect == ("email", "phone", "card", "ssn", "iban", "secret", "jwt", "bearer", "url_credentials")
    assert masks[8].selector is None and masks[8].detect == ("secret", "jwt", "bearer", "url_credentials")
    assert masks[9].header == "x-internal-token" and not masks[9].on_body
    assert rule.extensions["mask_request"][0].detect == ("email",)
    assert rule.extensions["on_unmaskable"] == "pass"
    assert rule.action is None  # masking alone decides nothing


@pytest.mark.parametrize(("item", "where", "message"), [
    ('"$..ssn["', "7:9: rules[0].mask[1]", "invalid JSONPath '$..ssn['"),
    ('"ssn"', "7:9: rules[0].mask[1]", "must be a string starting with '$'"),
    ('{path: "$.a[?(@.x == )]"}', "7:10: rules[0].mask[1].path", "invalid JSONPath"),
    ('{path: "$.a | $.b"}', "7:10: rules[0].mask[1].path", "uses Union, which masks do not support"),
    ('{path: "$.a", with: 5}', "7:23: rules[0].mask[1].with", "quote numbers"),
    ('{detect: [email, foo]}', "7:26: rules[0].mask[1].detect[1]", "unknown detector 'foo'"),
    ('{detect: []}', "7:10: rules[0].mask[1].detect", "non-empty list"),
    ('{path: "$.x", header: "y"}', "7:9: rules[0].mask[1]", "either path or header"),
    ('{path: "$.x", keep_last: -1}', "7:23: rules[0].mask[1].keep_last", "from 0 to 64"),
    ('{path: "$.x", keep_last: true}', "7:23: rules[0].mask[1].keep_last", "from 0 to 64"),
    ('{path: "$.x", keep_last: 2, with: hash}', "7:9: rules[0].mask[1]", "either with or keep_last"),
    ('{detect: email, with: remove}', "7:25: rules[0].mask[1].with", "cannot be used with detect"),
    ('{header: "x y"}', "7:10: rules[0].mask[1].header", "header name"),
    ('{header: x, with: null}', "7:21: rules[0].mask[1].with", "cannot be null"),
    ('{pth: "$.a"}', "7:10: rules[0].mask[1].pth", "unknown mask key 'pth'"),
    ('{with: hash}', "7:9: rules[0].mask[1]", "needs path, header or detect"),
    ('[1]', "7:9: rules[0].mask[1]", "a JSONPath string or a mapping"),
])
def test_errors_name_line_column_and_field(item, where, message):
    with pytest.raises(RuleFileError) as caught:
        compile_policy(rules(f'- "$.ok"\n- {item}\n'), "t.yaml")
    (problem,) = caught.value.problems
    assert str(problem).startswith(f"t.yaml:{where}: ")
    assert message in problem.message


@pytest.mark.parametrize(("extra", "message"), [
    ("    on_unmaskable: maybe\n", "on_unmaskable must be one of block, pass"),
    ("    mask_request: {path: $.a}\n", "non-empty list of masks"),
])
def test_rule_level_errors(extra, message):
    with pytest.raises(RuleFileError) as caught:
        compile_policy(rules('- "$.ok"\n', extra), "t.yaml")
    assert message in str(caught.value)


def test_empty_mask_list_is_an_error():
    with pytest.raises(RuleFileError, match=r"t.yaml:5:5: rules\[0\].mask: must be a non-empty list"):
        compile_policy("version: 1\nrules:\n  - name: r\n    match: {}\n    mask: []\n", "t.yaml")
