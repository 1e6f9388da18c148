"""The mask path walker selects exactly what jsonpath-ng selects, on arbitrary documents."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng import jsonpath as jp
from jsonpath_ng.ext import parse

from addons.masking.jsonselect import Selector, render

KEYS = st.sampled_from(["a", "b", "email", "items", "role", "x y"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["admin", "u", ""]))
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=25)

EXPRESSIONS = [
    "$", "$.a", "$..email", "$.items[*].email", "$..items[0]", "$.items[-1]", "$.items[1:3]",
    "$.items[::2].a", "$.*", "$..*", "$['a','b']", "$..[0]", "$.a..b", "$['x y']",
    "$..items[?(@.role=='admin')].email", "$.items[?(@.a > 1)]", "$..[?(@ == 'admin')]",
    "$..items[?(@.role == $.role)]",
    # `$` in the middle of a path jumps back to the root only from values reached so far.
    "$.a.$.b", "$.nothing.$", "$.*.$", "$..$", "$..$.b", "$.a..$", "$[*].$..b",
]

#: Steps of generated paths, `$` among them: mid-path roots were the one form the walker
#: got wrong (it jumped to the root even when the steps before it had matched nothing).
STEPS = st.sampled_from([
    ".a", ".b", ".email", ".items", "['x y']", "['a','b']", ".*", "[*]", "[0]", "[-1]",
    "[1:3]", "[::2]", "..a", "..*", "..[0]", ".$", "..$", "[?(@.role=='admin')]", "[?(@ == 'u')]",
])
GENERATED = st.lists(STEPS, min_size=1, max_size=5).map(lambda steps: "$" + "".join(steps))


def reference(expression, document):
    """Concrete paths from jsonpath-ng itself, negative indices made positive."""
    out = []
    for match in parse(expression).find(document):
        parts, datum = [], match
        while datum is not None and datum.context is not None:
            path = datum.path
            if isinstance(path, jp.Fields):
                parts.append(path.fields[0])
            else:
                index = path.indices[0]
                parts.append(index % len(datum.context.value))
            datum = datum.context
        out.append(tuple(reversed(parts)))
    return out


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=40, deadline=None)
@given(document=DOCUMENTS)
def test_same_matches_as_jsonpath_ng(expression, document):
    assert_same_matches(expression, document)


@settings(max_examples=600, deadline=None)
@given(expression=GENERATED, document=DOCUMENTS)
def test_same_matches_as_jsonpath_ng_on_generated_paths(expression, document):
    assert_same_matches(expression, document)


def test_a_mid_path_root_after_a_step_that_matched_nothing_selects_nothing():
    document = {"b": 1}
    assert Selector("$.a.$.b", parse("$.a.$.b")).locate(document) == []
    assert [loc.path for loc in Selector("$.b.$.b", parse("$.b.$.b")).locate(document)] == [("b",)]


def assert_same_matches(expression, document):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        selector = Selector(expression, parse(expression))
        expected = reference(expression, document)
    locations = selector.locate(document)
    assert sorted(map(repr, (loc.path for loc in locations))) == sorted(map(repr, expected)), expression
    for loc in locations:
        assert loc.parent is None or loc.parent[loc.key] is loc.value


def test_render_folds_indices_and_quotes_odd_names():
    assert render(("items", 3, "email")) == "$.items[*].email"
    assert render(("x y", 0)) == "$['x y'][*]"
    assert render(()) == "$"
