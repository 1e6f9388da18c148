import html
import json
import re

from review_ui.highlight import HIGHLIGHT_MAX, highlight_json


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
