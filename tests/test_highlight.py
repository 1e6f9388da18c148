import html
import json
import re

from review_ui.highlight import HIGHLIGHT_MAX, highlight_json, highlight_sql


def text_of(markup: str) -> str:
    """What the browser shows: tags removed, entities decoded, whitespace kept (it is a <pre>)."""
    return html.unescape(re.sub(r"<[^>]+>", "", str(markup)))


def test_pretty_prints_and_classes_each_token():
    out = highlight_json('{"a": [1, true, null], "b": "x"}')
    assert '<span class="j-key">&#34;a&#34;</span>' in out
    assert '<span class="j-num">1</span>' in out
    assert '<span class="j-lit">true</span>' in out and '<span class="j-lit">null</span>' in out
    assert '<span class="j-str">&#34;x&#34;</span>' in out
    assert json.loads(text_of(out)) == {"a": [1, True, None], "b": "x"}


def test_everything_is_escaped():
    out = highlight_json('{"<img src=x onerror=alert(1)>": "</pre><script>alert(1)</script>"}')
    assert "<script>" not in out and "<img" not in out
    assert "&lt;script&gt;" in out


def test_masked_and_redacted_values_are_marked():
    out = highlight_json('{"ssn": "[masked]", "mail": "[masked:email]", "key": "[redacted]", "x": "plain"}')
    assert out.count('class="j-str masked"') == 3


def test_not_json_or_too_big_is_not_highlighted():
    assert highlight_json("plain text") is None
    assert highlight_json("") is None
    assert highlight_json(None) is None
    assert highlight_json('"' + "x" * HIGHLIGHT_MAX + '"') is None


def test_empty_containers_and_unicode():
    assert text_of(highlight_json('{"a": {}, "b": [], "c": "ünï"}')) == '{\n  "a": {},\n  "b": [],\n  "c": "ünï"\n}'


# --- SQL ------------------------------------------------------------------------------

SQL = "DELETE FROM public.customers\nWHERE id = 42 AND note = 'a -- b' /* why */ -- done"


def test_sql_keywords_strings_numbers_and_comments_are_classed():
    out = highlight_sql(SQL)
    assert '<span class="s-kw">DELETE</span>' in out and '<span class="s-kw">WHERE</span>' in out
    assert '<span class="s-str">&#39;a -- b&#39;</span>' in out  # a "--" inside a string is no comment
    assert '<span class="s-num">42</span>' in out
    assert out.endswith('<span class="s-com"> /* why */ -- done</span>')
    assert '<span class="s-kw">customers' not in out  # names are not keywords


def test_sql_text_is_kept_character_for_character():
    for text in (SQL, "SELECT\n  a,\n  b\nFROM t;\nSELECT 1", "SELECT 'x''y', \"Quoted\" FROM t"):
        assert text_of(highlight_sql(text)) == text


def test_sql_is_escaped():
    out = highlight_sql("SELECT '</pre><script>alert(1)</script>' FROM t")
    assert "<script>" not in out and "&lt;script&gt;" in out


def test_sql_that_does_not_tokenize_is_shown_plain_and_escaped():
    out = highlight_sql("SELECT 'unterminated <b>")
    assert "<b>" not in out and text_of(out) == "SELECT 'unterminated <b>"
