"""Body recognition and rewriting: JSON, NDJSON, SSE, text, binary; numbers and unicode kept."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.masking.bodies import Kind, Unparseable, dump_json, kind_of, parse_json, rewrite


@pytest.mark.parametrize(("content_type", "body", "kind"), [
    ("application/json", b"{}", Kind.JSON),
    ("application/json; charset=utf-8", b"[]", Kind.JSON),
    ("application/problem+json", b"{}", Kind.JSON),
    ("application/vnd.api+json", b"{}", Kind.JSON),
    ("application/x-ndjson", b"{}\n{}", Kind.NDJSON),
    ("application/jsonl", b"{}\n", Kind.NDJSON),
    ("text/event-stream", b"data: {}\n\n", Kind.SSE),
    ("text/plain", b' \n{"a": 1}', Kind.JSON),  # sniffed
    ("", b"[1, 2]", Kind.JSON),
    ("text/plain", b"{not json", Kind.JSON),  # sniffed by its first byte; rewrite() parses it once
    ("text/html", b"<p>hi</p>", Kind.TEXT),
    ("image/png", b"{}", Kind.BINARY),
    ("application/octet-stream", b"[1]", Kind.BINARY),
])
def test_recognition(content_type, body, kind):
    assert kind_of(content_type, body) is kind


def test_a_sniffed_body_that_does_not_parse_is_masked_as_text():
    out = rewrite(b"{not json 078-05-1120", "text/plain", lambda d: (d, False),
                  lambda text: (text.replace("078-05-1120", "[masked]"), True))
    assert out == b"{not json [masked]"


def test_a_sniffed_body_that_does_not_parse_is_refused_when_path_masks_need_json():
    with pytest.raises(Unparseable):
        rewrite(b"{not json", "text/plain", lambda d: (d, True), lambda text: (text, False), need_json=True)


def upper_strings(document):
    """A JSON editor that upper-cases every string value it finds at the top level."""
    if isinstance(document, dict):
        changed = any(isinstance(v, str) for v in document.values())
        return {k: v.upper() if isinstance(v, str) else v for k, v in document.items()}, changed
    return document, False


def shout(text):
    return text.replace("secret", "[x]"), "secret" in text


def test_untouched_bodies_return_none_so_the_original_bytes_stay():
    assert rewrite(b'{"n": 1,   "m": [1.0]}', "application/json", upper_strings, shout) is None
    assert rewrite(b"\x89PNG plain", "image/png", upper_strings, shout) is None


def test_no_body_escapes_the_editors_by_its_content_type_or_charset():
    """Was: an image/png body and a non-UTF-8 text body were returned untouched, so a
    text mask never saw the secret in them (issue 12, finding 5)."""
    assert rewrite(b"\x89PNG secret", "image/png", upper_strings, shout) == b"\x89PNG [x]"
    assert rewrite(b"\xe9 secret", "text/plain", upper_strings, shout) == b"\xe9 [x]"  # latin-1, as requests reads it
    with pytest.raises(Unparseable, match="binary"):
        rewrite(b"\x89PNG\r\n\x1a\n\x00 secret", "image/png", upper_strings, shout)
    with pytest.raises(Unparseable, match="unknown charset"):
        rewrite(b"secret", "text/plain; charset=x-bogus", upper_strings, shout)


def test_json_keeps_unicode_big_integers_and_decimal_text():
    body = '{"s": "zoë ☃ \\u00e9", "i": 123456789012345678901234567890, "f": 1.10, "e": 1e5, "g": 0.1, "n": -0.0}'
    out = rewrite(body.encode(), "application/json", upper_strings, shout)
    assert out.decode() == '{"s":"ZOË ☃ É","i":123456789012345678901234567890,"f":1.10,"e":1e5,"g":0.1,"n":-0.0}'


def test_top_level_arrays_and_scalars_keep_their_shape():
    document = parse_json(b'[1, [2, {"a": [null, true, "x"]}], "y", 2.50]')
    assert dump_json(document) == b'[1,[2,{"a":[null,true,"x"]}],"y",2.50]'


def test_labelled_json_that_is_not_json_is_treated_as_text():
    assert rewrite(b"oops secret", "application/json", upper_strings, shout) == b"oops [x]"


def test_deep_nesting_is_unparseable_not_a_crash():
    with pytest.raises(Unparseable):
        rewrite(b"[" * 100_000 + b"]" * 100_000, "application/json", upper_strings, shout)


def test_ndjson_line_by_line_keeps_line_endings_and_blank_lines():
    body = b'{"a": "x"}\r\n\r\nsecret line\n{"b": 1}\n'
    out = rewrite(body, "application/x-ndjson", upper_strings, shout)
    assert out == b'{"a":"X"}\r\n\r\n[x] line\n{"b": 1}\n'


def test_sse_multi_line_data_is_one_value_and_other_fields_stay():
    body = b'event: a\nid: 7\ndata: {"a":\ndata:  "x"}\n\nretry: 10\ndata: secret\ndata: again\n\ndata: [DONE]\n\n'
    out = rewrite(body, "text/event-stream", upper_strings, shout)
    assert out == b'event: a\nid: 7\ndata: {"a":"X"}\n\nretry: 10\ndata: [x]\ndata: again\n\ndata: [DONE]\n\n'


def test_sse_without_trailing_blank_line_and_with_crlf():
    out = rewrite(b'data: {"a": "x"}\r\n', "text/event-stream", upper_strings, shout)
    assert out == b'data: {"a":"X"}\r\n'


def test_text_uses_the_declared_charset():
    body = "café secret".encode("latin-1")
    assert rewrite(body, "text/plain; charset=latin-1", upper_strings, shout) == "café [x]".encode("latin-1")


def test_utf8_bom_and_utf16_json_parse():
    assert parse_json(b"\xef\xbb\xbf{\"a\": 1}") == {"a": 1}
    assert parse_json(json.dumps({"a": "é"}).encode("utf-16")) == {"a": "é"}


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
       st.sampled_from(["application/json", "application/x-ndjson", "text/event-stream", "text/plain",
                        "text/plain; charset=latin-1", "", "image/png", "text/plain; charset=bogus"]))
def test_rewrite_never_raises_on_arbitrary_bodies(body, content_type):
    try:
        out = rewrite(body, content_type, upper_strings, shout)
    except Unparseable:
        return
    assert out is None or isinstance(out, bytes)
