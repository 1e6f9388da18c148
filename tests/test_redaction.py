"""Applying masks: each replacement, detectors inside values, headers, and properties that
must hold for any JSON (structure kept apart from masked values; never an exception)."""

from __future__ import annotations

import json
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng.ext import parse
from mitmproxy import http

from addons.masking.bodies import dump_json, parse_json
from addons.masking.jsonselect import Selector, render
from addons.masking.pseudonyms import Pseudonyms
from addons.masking.redaction import Redactor, Tally, keep_last
from addons.policy.engine import compile_policy

REDACTOR = Redactor(Pseudonyms(key=b"k" * 32))


def masks(yaml_list: str):
    text = "version: 1\nrules:\n  - name: r\n    match: {}\n    mask:\n" + textwrap.indent(
        textwrap.dedent(yaml_list), "      ")
    return compile_policy(text).rules[0].extensions["mask"]


def apply(document, yaml_list):
    tally = Tally()
    return REDACTOR.document(document, masks(yaml_list), tally), tally


def test_replacements():
    doc = {"a": "secret-a", "n": 4242424242424242, "f": 12.5, "s": "ab", "h": "x@y.com", "r": 1, "z": [1]}
    out, tally = apply(doc, """\
        - "$.a"
        - {path: "$.n", keep_last: 4}
        - {path: "$.f", keep_last: 2}
        - {path: "$.s", keep_last: 4}
        - {path: "$.h", with: hash}
        - {path: "$.r", with: remove}
        - {path: "$.z", with: null}
    """)
    assert out == {"a": "[masked]", "n": "************4242", "f": "**.5", "s": "**",
                   "h": REDACTOR.pseudonyms.token("x@y.com", "h"), "z": None}
    assert tally.count == 7
    assert tally.paths == {"$.a", "$.n", "$.f", "$.s", "$.h", "$.r", "$.z"}


def test_remove_many_array_elements_and_the_root():
    out, tally = apply({"items": [0, 1, 2, 3, 4, 5]}, '- {path: "$.items[1::2]", with: remove}\n')
    assert out == {"items": [0, 2, 4]} and tally.count == 3
    assert apply({"a": 1}, '- "$"\n')[0] == "[masked]"
    assert apply([1], '- {path: "$", with: remove}\n')[0] is None


def test_a_value_selected_twice_is_masked_once():
    out, tally = apply({"a": "x@y.com"}, '- {path: "$[\'a\',\'a\']", with: hash}\n')
    assert out["a"] == REDACTOR.pseudonyms.token("x@y.com", "a") and tally.count == 1


def test_detect_inside_nested_values_long_numbers_and_keys_left_alone():
    doc = {"notes": {"t": ["ring +1 415 555 2671", {"x": "ann@example.com and bob@example.org"}]},
           "card": 4242424242424242, "id": 1234567890123, "ann@example.com": 1}
    out, tally = apply(doc, "- {detect: [phone, email, card]}\n")
    assert out == {"notes": {"t": ["ring [masked:phone]", {"x": "[masked:email] and [masked:email]"}]},
                   "card": "[masked:card]", "id": 1234567890123, "ann@example.com": 1}
    assert tally.count == 4
    assert tally.paths == {"$.notes.t[*]", "$.notes.t[*].x", "$.card"}


def test_detect_with_hash_and_keep_last():
    out, _ = apply({"t": "mail ann@example.com"}, "- {path: $.t, detect: email, with: hash}\n")
    assert out == {"t": "mail " + REDACTOR.pseudonyms.token("ann@example.com", "email")}
    out, _ = apply({"t": "card 4242 4242 4242 4242."}, "- {path: $.t, detect: card, keep_last: 4}\n")
    assert out == {"t": "card ***************4242."}


def test_text_gets_only_masks_without_a_path():
    tally = Tally()
    text = REDACTOR.text("ssn 123-45-6789", masks('- "$..ssn"\n- {path: $.a, detect: ssn}\n- {detect: ssn}\n'), tally)
    assert text == "ssn [masked:ssn]" and tally.paths == {"body"}


def test_headers():
    headers = http.Headers([(b"X-Token", b"abc"), (b"X-Token", b"def"), (b"X-Gone", b"1"),
                            (b"X-Auth", b"Bearer abcdefghijklmnop1234"), (b"X-Card", b"4242424242424242")])
    tally = Tally()
    REDACTOR.headers(headers, masks("""\
        - {header: x-token}
        - {header: x-gone, with: remove}
        - {header: x-auth, detect: secret}
        - {header: x-card, keep_last: 4}
        - {header: x-absent}
    """), tally)
    assert headers.get_all("x-token") == ["[masked]", "[masked]"]
    assert "x-gone" not in headers
    assert headers["x-auth"] == "Bearer [masked:bearer]"
    assert headers["x-card"] == "************4242"
    assert tally.count == 5


def test_keep_last():
    assert keep_last("abcdef", 2) == "****ef"
    assert keep_last("ab", 2) == "**"
    assert keep_last("abc", 0) == "***"


# --- properties ------------------------------------------------------------------------------

KEYS = st.sampled_from(["ssn", "email", "items", "notes", "a", "é☃"])
TEXT = st.one_of(st.text(max_size=20), st.sampled_from([
    "ann@example.com", "+1 415 555 2671", "4242 4242 4242 4242", "123-45-6789", "AKIAIOSFODNN7EXAMPLE"]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(KEYS, inner, max_size=5)), max_leaves=30)

WHOLE_VALUE_MASKS = masks("""\
    - "$..ssn"
    - {path: "$..email", with: hash}
    - {path: "$.items[*].a", keep_last: 2}
    - {path: "$..notes[0]", with: null}
""")
SELECTED = ["$..ssn", "$..email", "$.items[*].a", "$..notes[0]"]
EVERY_MASK = masks("""\
    - "$..ssn"
    - {path: "$..email", with: hash}
    - {path: "$..a", with: remove}
    - {path: "$..items[*]", detect: [email, phone, card, ssn, iban, secret]}
    - {detect: [secret, card], keep_last: 4}
    - {path: "$..notes[-1]", with: remove}
    - {path: "$[?(@.a == 1)]", with: null}
""")


def _masked_paths(document):
    found = set()
    for expression in SELECTED:
        found |= {loc.path for loc in Selector(expression, parse(expression)).locate(document)}
    return found


def _same_apart_from(original, masked, selected, path=()):
    if path in selected:
        return
    if isinstance(original, dict):
        assert isinstance(masked, dict) and list(masked) == list(original), render(path)
        for key in original:
            _same_apart_from(original[key], masked[key], selected, (*path, key))
    elif isinstance(original, list):
        assert isinstance(masked, list) and len(masked) == len(original), render(path)
        for i, (a, b) in enumerate(zip(original, masked, strict=True)):
            _same_apart_from(a, b, selected, (*path, i))
    else:
        assert masked == original, render(path)


@settings(max_examples=150, deadline=None)
@given(DOCUMENTS)
def test_masking_changes_only_selected_values(document):
    original = json.loads(json.dumps(document))
    selected = _masked_paths(original)
    masked = REDACTOR.document(document, WHOLE_VALUE_MASKS, Tally())
    _same_apart_from(original, masked, selected)


@settings(max_examples=150, deadline=None)
@given(DOCUMENTS)
def test_masking_never_raises_and_always_yields_json(document):
    original = json.loads(json.dumps(document))
    tally = Tally()
    masked = REDACTOR.document(document, EVERY_MASK, tally)
    assert parse_json(dump_json(masked)) == json.loads(json.dumps(masked))
    if masked != original:  # what reaches the agent changed: the tally (and so the recording) says so
        assert tally.count > 0


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_text_masking_never_raises(text):
    REDACTOR.text(text, EVERY_MASK, Tally())
