"""HTTP bodies as they really are: JSON, NDJSON, server-sent events, other text, binary.

:func:`rewrite` recognises the body (by content type, then by sniffing for JSON),
hands each JSON document to ``edit_json`` and free text to ``edit_text``, and
re-assembles the body only if an editor changed something, so an untouched body keeps
its exact bytes. NDJSON is edited line by line and SSE event by event.

A body is never skipped because of what it claims to be: content negotiation
(``?format=xml``, JSONP, XSSI prefixes, ``image/png`` that is really text) must not
take a response around the masks. JSON behind an XSSI prefix (``)]}'``, ``while(1);``)
or inside a JSONP call (``cb({...});``) is unwrapped, edited and re-wrapped with its
exact original prefix and suffix. When the caller needs JSON (path masks), any other
body raises :class:`Unparseable`; otherwise every body that decodes as text (declared
charset, else BOM/NUL sniffing, else UTF-8, else latin-1) and has no control
characters goes to ``edit_text``, and anything else is binary and raises too. Re-serialised
JSON keeps unicode as is (no ``\\u`` escapes), integers of any size, and decimals
whose text a float would not reproduce (``1.10``, ``1e5``, 20-digit amounts) verbatim.
"""

from __future__ import annotations

import codecs
import enum
import json
import re
from collections.abc import Callable
from json import encoder as json_encoder
from typing import Any

from mitmproxy.net.http.headers import parse_content_type

from addons.core.jsonbody import looks_like_json

JsonEdit = Callable[[Any], tuple[Any, bool]]  # document -> (new document, changed)
TextEdit = Callable[[str], tuple[str, bool]]


class Kind(enum.Enum):
    JSON = "json"
    NDJSON = "ndjson"
    SSE = "sse"
    TEXT = "text"
    BINARY = "binary"


class Unparseable(Exception):
    """A body that must be edited but cannot be examined (e.g. JSON nested too deeply)."""


NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines", "application/jsonlines"}
BINARY_PREFIXES = ("image/", "audio/", "video/", "font/")
BINARY_TYPES = {"application/octet-stream", "application/zip", "application/gzip",
                "application/pdf", "application/x-protobuf", "application/protobuf",
                "application/grpc", "application/wasm"}


def media_type(content_type: str) -> tuple[str, str | None]:
    """('application/json', 'utf-8') from a Content-Type header value."""
    parsed = parse_content_type(content_type) if content_type else None
    if parsed is None:
        return "", None
    major, minor, params = parsed
    return f"{major}/{minor}".lower(), params.get("charset")


def kind_of(content_type: str, content: bytes) -> Kind:
    mime, _ = media_type(content_type)
    if labelled_json(content_type):
        return Kind.JSON
    if mime in NDJSON_TYPES:
        return Kind.NDJSON
    if mime == "text/event-stream":
        return Kind.SSE
    if mime in BINARY_TYPES or mime.startswith(BINARY_PREFIXES):
        return Kind.BINARY
    if looks_like_json(content):
        return Kind.JSON
    return Kind.TEXT


def labelled_json(content_type: str) -> bool:
    mime, _ = media_type(content_type)
    return mime == "application/json" or mime.endswith("+json") or mime == "text/json"


def rewrite(content: bytes, content_type: str, edit_json: JsonEdit, edit_text: TextEdit,
            need_json: bool = False) -> bytes | None:
    """The edited body, or None when nothing changed.

    ``need_json``: the editor needs JSON documents (path masks); a body that is not JSON
    (or NDJSON/SSE of JSON, or wrapped JSON) raises :class:`Unparseable` instead of
    being handed to ``edit_text``. A binary body always raises: nothing could be
    checked in it."""
    kind = kind_of(content_type, content)
    if kind is Kind.JSON:
        try:
            document = parse_json(content)
        except (ValueError, Unparseable) as exc:  # JSON-looking but is not: only text masks can apply...
            wrapped = _rewrite_wrapped(content, edit_json)
            if wrapped is not _NOT_WRAPPED:
                return wrapped
            labelled = labelled_json(content_type)
            if need_json or (labelled and content.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] in (b"{", b"[")):
                # ...unless it is JSON-shaped: a lenient client (JSON5, comments, trailing
                # commas) would still read the values a path mask should have hidden.
                raise Unparseable(f"a body labelled JSON that does not parse: {exc}") from None
            kind = Kind.TEXT
        else:
            new, changed = edit_json(document)
            return dump_json(new) if changed else None
    if kind in (Kind.TEXT, Kind.BINARY):
        wrapped = _rewrite_wrapped(content, edit_json)
        if wrapped is not _NOT_WRAPPED:
            return wrapped
        if need_json:
            mime = media_type(content_type)[0] or "untyped"
            raise Unparseable(f"a {mime} body is not JSON the path masks can walk")
    text, charset = decode_text(content, content_type)
    if kind is Kind.NDJSON:
        new_text, changed = _edit_lines(text, edit_json, edit_text, need_json)
    elif kind is Kind.SSE:
        new_text, changed = _edit_events(text, edit_json, edit_text, need_json)
    else:
        new_text, changed = edit_text(text)
    return new_text.encode(charset, "replace") if changed else None


#: C0 controls text does not contain (tab, LF, VT, FF, CR and ESC are allowed): a body
#: with any of them is binary, whatever its content type says.
_BINARY_CONTROLS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")


def decode_text(content: bytes, content_type: str) -> tuple[str, str]:
    """(text, codec) of a body read as text, the way a client would read it: the declared
    charset, else a BOM or the NUL pattern of UTF-16/32, else UTF-8, else latin-1 (what
    ``requests`` assumes for text without a charset). Raises :class:`Unparseable` for an
    unknown charset, bytes that do not decode in the declared one, and binary data."""
    declared = media_type(content_type)[1]
    if declared:
        try:
            codecs.lookup(declared)
        except LookupError:
            raise Unparseable(f"the body declares an unknown charset {declared!r}") from None
        candidates = [declared]
    else:
        candidates = [json.detect_encoding(content), "utf-8", "latin-1"]
    for charset in candidates:
        try:
            text = content.decode(charset)
        except UnicodeDecodeError:
            continue
        if _BINARY_CONTROLS.search(text):
            break
        return text, charset
    if declared:
        raise Unparseable(f"a binary body, or one that does not decode as its declared charset {declared!r}")
    raise Unparseable("a binary body (control characters or undecodable bytes): nothing in it can be checked")


# --- JSON behind an XSSI prefix or inside a JSONP call -----------------------------------

_XSSI_PREFIX = re.compile(rb"\A\s*(?:\)\]\}',?|\)\]\}|while\s*\(\s*1\s*\)\s*;|for\s*\(\s*;\s*;\s*\)\s*;)\s*")
#: ``callback(``, ``/**/ns.cb[0](`` -- the shapes JSONP endpoints emit.
_JSONP_OPEN = re.compile(rb"\A\s*(?:/\*\*/\s*)?[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*|\[\d+\])*\s*\(\s*")
_JSONP_CLOSE = re.compile(rb"\s*\)\s*;?\s*\Z")
_NOT_WRAPPED: Any = object()


def unwrap(content: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(prefix, JSON, suffix) for XSSI-prefixed JSON or a JSONP call, else None. The
    middle part is only returned if it parses as JSON."""
    for opener, closer in ((_XSSI_PREFIX, None), (_JSONP_OPEN, _JSONP_CLOSE)):
        start = opener.match(content)
        if start is None:
            continue
        end = closer.search(content, start.end()) if closer else None
        if closer and end is None:
            continue
        stop = end.start() if end else len(content)
        inner = content[start.end():stop]
        try:
            parse_json(inner)
        except ValueError:
            continue
        return content[:start.end()], inner, content[stop:]
    return None


def _rewrite_wrapped(content: bytes, edit_json: JsonEdit) -> Any:
    parts = unwrap(content)
    if parts is None:
        return _NOT_WRAPPED
    prefix, inner, suffix = parts
    new, changed = edit_json(parse_json(inner))
    return prefix + dump_json(new) + suffix if changed else None


# --- JSON that keeps its numbers ---------------------------------------------------------


class ExactFloat(float):
    """A decimal whose text ``repr(float)`` would not give back; ``text`` is the original."""

    __slots__ = ("text",)

    text: str


def _parse_float(text: str) -> float:
    value = float(text)
    if repr(value) == text:
        return value
    exact = ExactFloat(value)
    exact.text = text
    return exact


def parse_json(content: bytes | str) -> Any:
    """Parse JSON (UTF-8/16/32, BOM tolerated). Raises ValueError if it is not JSON,
    Unparseable if it is nested too deeply to handle."""
    if isinstance(content, bytes):
        # Invalid bytes become U+FFFD, as a lenient client would read them: the values
        # around them must still be masked (hardening: invalid UTF-8 must not hide JSON).
        content = content.decode(json.detect_encoding(content), "replace")
    try:
        return json.loads(content.lstrip("\ufeff"), parse_float=_parse_float)
    except RecursionError:
        raise Unparseable("JSON nested too deeply to mask") from None


def _float_text(value: float) -> str:
    if isinstance(value, ExactFloat):
        return value.text
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def dump_json(document: Any) -> bytes:
    """Compact UTF-8 JSON. Raises Unparseable if the document is nested too deeply."""
    try:
        if not _has_exact_float(document):
            return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        chunks = json_encoder._make_iterencode(  # the pure-Python encoder, to print ExactFloat text
            None, _unserialisable, json_encoder.encode_basestring, None, _float_text,
            ":", ",", False, False, True,
        )(document, 0)
        return "".join(chunks).encode("utf-8")
    except RecursionError:
        raise Unparseable("JSON nested too deeply to mask") from None


def _unserialisable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _has_exact_float(document: Any) -> bool:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, ExactFloat):
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


#: Non-JSON pieces of a stream that carry no value a path mask could be about
#: (``data: [DONE]`` ends OpenAI-style event streams).
_BARE_WORD = re.compile(r"\[?[A-Za-z_]{1,32}\]?")


def edit_json_text(text: str, edit_json: JsonEdit, edit_text: TextEdit,
                   need_json: bool = False) -> tuple[str, bool]:
    """One JSON document in text (an NDJSON line, an SSE data field), or free text
    (which raises :class:`Unparseable` under ``need_json``, bare words apart)."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[", '"') or stripped[:1].isdigit() or stripped in ("true", "false", "null"):
        try:
            document = parse_json(stripped)
        except ValueError:
            pass
        else:
            new, changed = edit_json(document)
            return (dump_json(new).decode("utf-8"), True) if changed else (text, False)
    if need_json and stripped and not _BARE_WORD.fullmatch(stripped):  # empty: nothing to walk
        raise Unparseable("a line or event of the stream is not JSON the path masks can walk")
    return edit_text(text)


_LINE_BREAK = re.compile(r"(\r\n|\r|\n)")


def _edit_lines(text: str, edit_json: JsonEdit, edit_text: TextEdit, need_json: bool) -> tuple[str, bool]:
    parts = _LINE_BREAK.split(text)  # line, break, line, break, ..., line
    changed = False
    for i in range(0, len(parts), 2):
        if parts[i].strip():
            parts[i], edited = edit_json_text(parts[i], edit_json, edit_text, need_json)
            changed |= edited
    return "".join(parts), changed


def _edit_events(text: str, edit_json: JsonEdit, edit_text: TextEdit, need_json: bool) -> tuple[str, bool]:
    """Server-sent events: the data lines of each event form one value (joined by
    newlines, as a browser's EventSource does); other fields stay as they are."""
    parts = _LINE_BREAK.split(text)
    lines = parts[0::2]
    breaks = parts[1::2] + [""]
    changed = False
    event: list[int] = []
    for i, line in enumerate([*lines, ""]):
        if line.startswith("data:"):
            event.append(i)
            continue
        if line or not event:
            continue
        changed |= _edit_event(lines, breaks, event, edit_json, edit_text, need_json)
        event = []
    return "".join(line + brk for line, brk in zip(lines, breaks, strict=True)), changed


def _edit_event(lines: list[str], breaks: list[str], data: list[int], edit_json: JsonEdit,
                edit_text: TextEdit, need_json: bool) -> bool:
    values = [_field_value(lines[i]) for i in data]
    new, changed = edit_json_text("\n".join(values), edit_json, edit_text, need_json)
    if not changed:
        return False
    new_lines = new.split("\n")
    if len(new_lines) == len(data):
        for i, value in zip(data, new_lines, strict=True):
            lines[i] = f"data: {value}" if value else "data:"
        return True
    first = data[0]
    lines[first] = (breaks[first] or "\n").join(f"data: {value}" for value in new_lines)
    for i in data[1:]:  # fold the other data lines into the first
        lines[i] = breaks[i] = ""
    return True


def _field_value(line: str) -> str:
    value = line[5:]
    return value[1:] if value.startswith(" ") else value
