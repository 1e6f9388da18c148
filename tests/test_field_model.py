"""The field model (addons.policy.fields): a request's fields from every place frameworks read
them, with every ambiguous reading kept. In-process; the gateway and Express tests are in
tests/test_typed_conditions.py."""

from __future__ import annotations

import pytest

from addons.core.jsonbody import UninspectableBody, UnsupportedCharset
from addons.policy.fields import MAX_FIELDS, readings, split_name

FORM = "application/x-www-form-urlencoded"


def form(body: bytes, query: str = "") -> tuple:
    return readings(FORM, body, query)


def multipart(*parts: tuple[str, bytes, str | None], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_bracket_names_build_objects_and_lists_as_qs_and_php_do():
    assert form(b"amount=25000&a[b][c]=1&tags[]=x&tags[]=y&d[1]=second&d[0]=first") == ({
        "amount": "25000", "a": {"b": {"c": "1"}}, "tags": ["x", "y"], "d": ["first", "second"],
    },)
    assert form(b"items[][price]=5&items[][price]=7") == ({"items": [{"price": "5"}, {"price": "7"}]},)
    assert split_name("a[b") == ["a[b"] and split_name("[x]") == ["[x]"]


def test_percent_escapes_plus_and_utf8():
    assert form(b"n%61me=a+b%20c&caf%C3%A9=%E2%82%AC") == ({"name": "a b c", "café": "€"},)
    with pytest.raises(UninspectableBody, match="UTF-8"):
        form(b"amount=%ff")


def test_a_repeated_field_is_every_reading_frameworks_give():
    # Flask reads the first copy, PHP the last, qs (Express) a list of both.
    assert set(map(repr, form(b"amount=5&amount=5000"))) == {
        repr({"amount": "5"}), repr({"amount": "5000"}), repr({"amount": ["5", "5000"]})}


def test_keys_are_case_folded_so_case_variants_are_duplicates():
    assert readings("application/json", b'{"Amount": 25000}', "") == ({"amount": 25000},)
    both = readings("application/json", b'{"amount": 5, "AMOUNT": 25000}', "")
    assert sorted(d["amount"] for d in both) == [5, 25000]
    assert form(b"AMOUNT=1") == ({"amount": "1"},)


def test_query_and_body_merge_and_a_conflict_gives_both_readings():
    assert readings("application/json", b'{"a": 1}', "b=2") == ({"a": 1, "b": "2"},)
    assert readings("application/json", b'{"a": {"x": 1}}', "a[y]=2") == ({"a": {"x": 1, "y": "2"}},)
    assert readings("application/json", b'{"amount": 5}', "amount=25000") == (
        {"amount": 5}, {"amount": "25000"})
    assert readings("", b"", "amount=25000") == ({"amount": "25000"},)
    assert readings("", b"", "") == ({},)


def test_multipart_fields_count_and_files_do_not():
    body = multipart(("amount", b"25000", None), ("upload", b"amount=1\xff\x00", "a.bin"))
    assert readings("multipart/form-data; boundary=b0undary", body, "") == ({"amount": "25000"},)
    body = multipart(("amount[]", b"25000", None), boundary="x-y")
    assert readings('multipart/form-data; boundary="x-y"', body, "") == ({"amount": ["25000"]},)


@pytest.mark.parametrize("body", [
    b"--b0undary\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n",  # never closed
    b"--b0undary\r\nContent-Disposition: attachment\r\n\r\n1\r\n--b0undary--\r\n",
    b"--b0undary\r\nno headers here\r\n--b0undary--\r\n",
])
def test_malformed_multipart_is_refused(body):
    with pytest.raises(UninspectableBody):
        readings("multipart/form-data; boundary=b0undary", body, "")


def test_bodies_of_unknown_type_are_refused_and_json_is_sniffed():
    with pytest.raises(UninspectableBody, match="cannot read fields"):
        readings("text/plain", b"amount=25000", "")
    with pytest.raises(UninspectableBody, match="cannot read fields"):
        readings("application/octet-stream", b'{"amount": 1}', "")
    assert readings("", b' {"amount": 1}', "") == ({"amount": 1},)
    with pytest.raises(UninspectableBody):
        readings("application/json", b"amount=25000", "")


def test_form_charsets_other_than_utf8_are_refused():
    with pytest.raises(UnsupportedCharset):
        readings(FORM + "; charset=shift_jis", b"amount=1", "")
    assert readings(FORM + "; charset=UTF-8", b"amount=1", "") == ({"amount": "1"},)


def test_work_is_bounded():
    with pytest.raises(UninspectableBody, match="fields"):
        form(b"&".join(b"f%d=1" % i for i in range(MAX_FIELDS + 1)))
    with pytest.raises(UninspectableBody, match="readings"):
        form(b"&".join(b"k%d=1&k%d=2" % (i, i) for i in range(4)))
    with pytest.raises(UninspectableBody, match="deeper"):
        form(b"a" + b"[x]" * 40 + b"=1")
