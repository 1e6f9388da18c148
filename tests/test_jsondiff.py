import json

from hypothesis import given
from hypothesis import strategies as st

from review_ui.audit.jsondiff import Change, child_path, diff, diff_bodies


def test_identical_documents_have_no_changes():
    doc = {"a": [1, {"b": None}], "c": "x"}
    assert diff(doc, json.loads(json.dumps(doc))) == []


def test_added_removed_changed_paths_in_document_order():
    old = {"id": 1, "name": "a", "tags": ["x", "y"], "gone": True}
    new = {"id": 2, "name": "a", "tags": ["x"], "new": {"k": 1}}
    assert diff(old, new) == [
        Change("changed", "$.id", 1, 2),
        Change("removed", "$.tags[1]", old="y"),
        Change("removed", "$.gone", old=True),
        Change("added", "$.new", new={"k": 1}),
    ]


def test_array_growth_is_added_at_the_new_indexes():
    assert diff([1], [1, 2, 3]) == [Change("added", "$[1]", new=2), Change("added", "$[2]", new=3)]


def test_type_changes_are_changes_even_when_python_thinks_equal():
    assert diff({"a": 1}, {"a": True}) == [Change("changed", "$.a", 1, True)]
    assert diff({"a": 1}, {"a": 1.0}) == []  # JSON has one number type
    assert diff({"a": {}}, {"a": []}) == [Change("changed", "$.a", {}, [])]


def test_keys_that_are_not_identifiers_are_quoted():
    assert child_path("$", "content-type") == '$["content-type"]'
    assert child_path("$", 'a"b') == '$["a\\"b"]'
    assert child_path("$.x", 3) == "$.x[3]"


def test_limit_caps_the_number_of_changes():
    assert len(diff(list(range(100)), [], limit=10)) == 10


def test_bodies_that_are_not_json_have_no_diff():
    assert diff_bodies("<html>", '{"a":1}') is None
    assert diff_bodies("", "{}") is None
    assert diff_bodies(b'{"a":1}', '{"a":2}') == [Change("changed", "$.a", 1, 2)]


def test_to_json_names_only_the_sides_that_exist():
    assert Change("added", "$.a", new=1).to_json() == {"kind": "added", "path": "$.a", "new": 1}
    assert Change("removed", "$.a", old=1).to_json() == {"kind": "removed", "path": "$.a", "old": 1}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)


@given(json_values, json_values)
def test_no_changes_exactly_when_equal_as_json(a, b):
    assert (diff(a, b) == []) == (json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True))
