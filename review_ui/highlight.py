"""Pretty-printed, highlighted JSON and SQL as safe HTML, rendered on the server.

The UI's Content-Security-Policy allows no inline script, so highlighting happens here:
every piece of text is HTML-escaped and wrapped in a ``<span class="j-...">`` (the
classes the shared stylesheet colours). Values the gateway replaced, i.e. masked
(``[masked]``, ``[masked:email]``) or redacted secrets (``[redacted]``), get the extra
class ``masked`` and a title, so auditors see what they are not seeing. Replacements
that carry no marker (a hash token, ``keep_last``'s ``****4242``, ``null``) are found by
the paths the masking event recorded (``$.items[*].email``): pass them as ``masked_paths``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from markupsafe import Markup, escape

from addons.core.secretforms import REDACTED
from addons.masking.jsonselect import render as render_path

MASK_MARKERS = ("[masked", REDACTED)
INDENT = "  "
#: Bodies larger than this are shown raw: highlighting megabytes only slows the page.
HIGHLIGHT_MAX = 512 * 1024


def is_masked(value: str) -> bool:
    return any(marker in value for marker in MASK_MARKERS)


def highlight_json(text: str | None, masked_paths: Any = ()) -> Markup | None:
    """The body pretty-printed and highlighted, or None when it is not (small) JSON."""
    if not text or len(text) > HIGHLIGHT_MAX:
        return None
    try:
        document = json.loads(text)
    except (ValueError, TypeError):
        return None
    parts: list[str] = []
    _render(document, 0, parts, (), frozenset(masked_paths))
    return Markup("".join(parts))


MASKED_TITLE = "masked or redacted by the gateway"


def _scalar(value: Any, masked: bool = False) -> str:
    if isinstance(value, str):
        encoded = escape(json.dumps(value, ensure_ascii=False))
        if masked or is_masked(value):
            return f'<span class="j-str masked" title="{MASKED_TITLE}">{encoded}</span>'
        return f'<span class="j-str">{encoded}</span>'
    css = "j-lit" if isinstance(value, bool) or value is None else "j-num"
    extra = f' masked" title="{MASKED_TITLE}' if masked else ""
    return f'<span class="{css}{extra}">{escape(json.dumps(value))}</span>'


def _render(value: Any, depth: int, out: list[str], path: tuple[Any, ...] = (),
            masked: frozenset[str] = frozenset()) -> None:
    pad, inner = INDENT * depth, INDENT * (depth + 1)
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{\n")
        for index, (key, item) in enumerate(value.items()):
            out.append(f'{inner}<span class="j-key">{escape(json.dumps(key, ensure_ascii=False))}</span>: ')
            _render(item, depth + 1, out, (*path, key) if masked else path, masked)
            out.append(",\n" if index < len(value) - 1 else "\n")
        out.append(f"{pad}}}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        out.append("[\n")
        for index, item in enumerate(value):
            out.append(inner)
            _render(item, depth + 1, out, (*path, 0) if masked else path, masked)
            out.append(",\n" if index < len(value) - 1 else "\n")
        out.append(f"{pad}]")
    else:
        out.append(_scalar(value, bool(masked) and render_path(path) in masked))


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null|[{}\[\],:]|\s+|.',
                         re.DOTALL)


def highlight_json_prefix(text: str | None) -> Markup | None:
    """A JSON document cut short (the first 64 KiB of a held body) laid out and coloured
    token by token: the same indentation and classes as :func:`highlight_json`, every
    character kept (escaped), an unterminated last string or object shown as it ends.
    None when the text does not start like JSON."""
    if not text or len(text) > HIGHLIGHT_MAX or text.lstrip()[:1] not in ("{", "["):
        return None
    out: list[str] = []
    depth, expect_key, after_open = 0, False, False
    stack: list[str] = []
    for token in _JSON_TOKEN.findall(text):
        if token.isspace():
            continue
        if after_open and token not in ("}", "]"):
            out.append("\n" + INDENT * depth)
        after_open = False
        if token in ("{", "["):
            stack.append(token)
            depth += 1
            expect_key = token == "{"
            out.append(token)
            after_open = True
        elif token in ("}", "]"):
            depth = max(0, depth - 1)
            if stack:
                stack.pop()
            out.append(("\n" + INDENT * depth if out and out[-1] not in ("{", "[") else "") + token)
            expect_key = False
        elif token == ",":
            out.append(",\n" + INDENT * depth)
            expect_key = bool(stack) and stack[-1] == "{"
        elif token == ":":
            out.append(": ")
            expect_key = False
        elif token.startswith('"'):
            css = "j-key" if expect_key else ("j-str masked" if is_masked(token) else "j-str")
            out.append(f'<span class="{css}">{escape(token)}</span>')
        elif token in ("true", "false", "null"):
            out.append(f'<span class="j-lit">{token}</span>')
        elif token[0] in "-0123456789":
            out.append(f'<span class="j-num">{escape(token)}</span>')
        else:
            out.append(str(escape(token)))
    return Markup("".join(out))


#: sqlglot token types shown as string literals and as quoted names.
_SQL_STRINGS = {"STRING", "NATIONAL_STRING", "RAW_STRING", "HEREDOC_STRING", "BIT_STRING",
                "HEX_STRING", "BYTE_STRING", "UNICODE_STRING"}
_SQL_PLAIN = {"VAR", "IDENTIFIER", "COMMA", "DOT", "SEMICOLON", "L_PAREN", "R_PAREN", "STAR",
              "EQ", "NEQ", "LT", "LTE", "GT", "GTE", "PLUS", "DASH", "SLASH", "COLON", "PARAMETER"}


def highlight_sql(text: str | None) -> Markup | None:
    """SQL as safe HTML with keywords, strings, numbers and comments in ``s-*`` spans.

    sqlglot's tokenizer finds the tokens; whatever lies between them (spaces, comments)
    is escaped as it is, so the reviewer reads every character of the laid-out text.
    Text that does not tokenize is shown escaped, without colours.
    """
    if not text:
        return None
    # Imported here: sqlglot costs a tenth of a second of every gateway start, UI or not.
    from sqlglot.tokens import Tokenizer

    try:
        tokens = Tokenizer().tokenize(text)
    except Exception:  # noqa: BLE001 - display only: fall back to the plain text
        return Markup(escape(text))
    out: list[str] = []
    at = 0
    for token in tokens:
        start, end = token.start, token.end + 1
        if start < at or end > len(text):
            return Markup(escape(text))  # offsets we cannot trust: show it plain
        gap = text[at:start]
        out.append(f'<span class="s-com">{escape(gap)}</span>' if "--" in gap or "/*" in gap else str(escape(gap)))
        out.append(_sql_token(token.token_type.name, text[start:end], Tokenizer.KEYWORDS))
        at = end
    tail = text[at:]
    out.append(f'<span class="s-com">{escape(tail)}</span>' if "--" in tail or "/*" in tail else str(escape(tail)))
    return Markup("".join(out))


def _sql_token(kind: str, source: str, keywords: dict[str, Any]) -> str:
    if kind in _SQL_STRINGS:
        css = "s-str masked" if is_masked(source) else "s-str"
        return f'<span class="{css}">{escape(source)}</span>'
    if kind == "NUMBER":
        return f'<span class="s-num">{escape(source)}</span>'
    if kind not in _SQL_PLAIN and source.upper() in keywords:
        return f'<span class="s-kw">{escape(source)}</span>'
    return str(escape(source))
