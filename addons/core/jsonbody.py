"""Reading a request body as JSON for `json` conditions, without being fooled or stalled.

An agent controls the body, and the upstream's JSON parser may be more lenient than
ours. The rules here keep a `json` condition from being dodged:

* Bodies are parsed strictly (no NaN/Infinity, numbers Python can hold), as UTF-8,
  UTF-16 or UTF-32 only (RFC 8259), told apart by BOM and null-byte pattern. A declared
  ``charset=`` naming anything else (utf-7, latin-1, shift_jis, ...), or one that
  disagrees with the bytes, is :class:`UnsupportedCharset`: the upstream would decode
  the bytes differently from the policy (utf-7 can hide a second ``"amount"`` key).
  :func:`decoded_body_text` gives the text exactly as the policy decoded it.
  A body that is declared JSON (``Content-Type: */json`` or ``*+json``) or looks like
  it (starts with ``{`` or ``[``) but does not parse is *uninspectable*: the policy
  then blocks the request rather than guess what a lenient upstream would read.
* Duplicate keys (``{"amount": 5, "amount": 5000}``) are kept: every combination of
  the duplicates is a *variant* of the document, and a condition must give the same
  answer for all of them (see :class:`Variants`), whichever copy the upstream reads.
* Size, decompression and nesting are bounded: a body larger than MAX_JSON_BODY
  (before or after ``Content-Encoding``), a compression bomb, an encoding we cannot
  decode, or nesting deeper than Python's recursion limit is uninspectable.
* With ``fold_case`` (what `json` conditions use), keys are case-folded: ``Amount`` is
  read as ``amount``, and ``{"amount": 5, "AMOUNT": 25000}`` is a duplicate like any
  other, because Go's decoder and others match keys case-insensitively.
"""

from __future__ import annotations

import codecs
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # plain data below; mitmproxy only names the message type
    from mitmproxy import http

#: Bodies larger than this (raw or decoded) are not parsed for `json` conditions.
MAX_JSON_BODY = 16 * 1024 * 1024
#: A document with more duplicate-key combinations than this is not evaluated.
MAX_VARIANTS = 64


class UninspectableBody(Exception):
    """The body exists but cannot be examined safely; callers fail closed."""


class UnsupportedCharset(UninspectableBody):
    """The body declares (or is in) a charset the policy does not read the way upstreams do."""


class _NotJson:
    def __repr__(self) -> str:
        return "NOT_JSON"


#: Marker kept for callers of the old JSON-only reading. `json` conditions no longer use it:
#: they read every place fields come from (addons.policy.fields), so a form is not "not JSON".
NOT_JSON: Any = _NotJson()


@dataclass(frozen=True)
class Variants:
    """A document with duplicate keys: one entry per way of resolving the duplicates."""

    documents: tuple[Any, ...]


def body_content(message: http.Message) -> bytes:
    """The body with ``Content-Encoding`` undone, bounded by MAX_JSON_BODY (raises
    UninspectableBody for streamed, oversized, bomb or unknown-coding bodies)."""
    raw = message.raw_content
    if raw is None:
        raise UninspectableBody("the body was streamed and cannot be inspected")
    if not raw:
        return b""
    if len(raw) > MAX_JSON_BODY:
        raise UninspectableBody(f"body of {len(raw)} bytes is too large to inspect")
    return decode_bounded(raw, message.headers.get("content-encoding", ""), MAX_JSON_BODY)


def decoded_body_text(message: http.Message) -> str:
    """The request body's text, decoded exactly as the policy decodes it.

    JSON (declared, or starting with ``{``/``[``): UTF-8/16/32 by BOM and null pattern,
    BOM removed. Anything else: UTF-8 (forms are ASCII percent-encoding; multipart
    fields are read as UTF-8). Raises UnsupportedCharset for a declared charset other
    than UTF-8/16/32 or one the bytes contradict, UninspectableBody for bytes that are
    not text in that encoding (or a body that cannot be inspected at all).
    """
    content = body_content(message)
    return body_text(content, message.headers.get("content-type", ""))


def body_text(content: bytes, content_type: str) -> str:
    """Plain-data form of :func:`decoded_body_text` (content already decoded)."""
    if declares_json(content_type) or looks_like_json(content):
        return json_text(content, content_type)
    charset = declared_charset(content_type)
    if charset not in (None, "utf-8"):
        raise UnsupportedCharset(f"charset {charset!r} is not supported for this body; send UTF-8")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UninspectableBody(f"the body is not valid UTF-8 text: {exc.reason} at byte {exc.start}") from None


#: Charsets RFC 8259 allows for JSON, by codecs' canonical name.
JSON_CHARSETS = ("utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")


def declared_charset(content_type: str) -> str | None:
    """The ``charset=`` parameter, canonical (``UTF8`` -> ``utf-8``); None if absent.

    Raises UnsupportedCharset for a charset Python does not know (the upstream might).
    """
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            value = value.strip().strip('"').strip()
            try:
                return codecs.lookup(value).name
            except LookupError:
                raise UnsupportedCharset(f"unknown charset {value!r}") from None
    return None


def json_text(content: bytes, content_type: str = "") -> str:
    """JSON bytes as text: UTF-8/16/32 detected from the bytes (RFC 8259, as
    ``json.loads`` does), refusing a declared charset that is another or disagrees."""
    declared = declared_charset(content_type)
    if declared is not None and declared not in JSON_CHARSETS:
        raise UnsupportedCharset(
            f"charset {declared!r} is not allowed for JSON (RFC 8259: UTF-8, UTF-16 or UTF-32)"
        )
    detected = _detect_json_encoding(content)
    if declared is not None and not _compatible(declared, detected):
        raise UnsupportedCharset(f"the body is declared {declared} but its bytes are {detected}")
    try:
        return content.decode(detected).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UninspectableBody(f"invalid JSON: not valid {detected}: {exc.reason} at byte {exc.start}") from None


def _detect_json_encoding(content: bytes) -> str:
    encoding = json.detect_encoding(content)
    if encoding == "utf-8-sig":
        return "utf-8"  # the BOM is removed after decoding
    if encoding in ("utf-16", "utf-32"):  # BOM present: name its byte order
        little = content.startswith(b"\xff\xfe")
        return f"{encoding}-{'le' if little else 'be'}"
    return encoding


def _compatible(declared: str, detected: str) -> bool:
    if declared in ("utf-16", "utf-32"):
        return detected.startswith(declared + "-")
    return declared == detected


def decode_bounded(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, deflate), refusing to exceed ``limit``."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    data = raw
    for coding in reversed(codings):  # the last coding listed was applied last
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            data = _inflate(data, zlib.MAX_WBITS | 16, limit)
        elif coding == "deflate":
            try:
                data = _inflate(data, zlib.MAX_WBITS, limit)
            except UninspectableBody:
                data = _inflate(data, -zlib.MAX_WBITS, limit)  # raw deflate, as sent by some clients
        else:
            raise UninspectableBody(f"cannot inspect a body with content-encoding {coding!r}")
    return data


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UninspectableBody(f"cannot decompress the body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise UninspectableBody(f"decompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise UninspectableBody("compressed body is truncated")
    return out


def declares_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.endswith("/json") or media.endswith("+json")


def looks_like_json(content: bytes) -> bool:
    if content[:4].count(0):  # UTF-16/32: the null pattern of RFC 8259 section 8.1
        try:
            content = content.decode(_detect_json_encoding(content)).encode("utf-8")
        except UnicodeDecodeError:
            return True  # looks like wide text: parse it, and fail closed if it is not JSON
    return content.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"[")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _Duplicated:
    """An object that had a repeated key: its (key, value) pairs in document order."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def parse_strict(content: bytes | str, *, fold_case: bool = False) -> Any:
    """Parse JSON strictly; duplicate keys give :class:`Variants`. Bytes are decoded as
    :func:`json_text` does (UTF-8/16/32 by detection); ``fold_case`` case-folds keys."""
    duplicates = False
    if isinstance(content, bytes):
        content = json_text(content)

    def pairs_hook(pairs: list[tuple[str, Any]]) -> Any:
        nonlocal duplicates
        if fold_case:
            pairs = [(key.casefold(), value) for key, value in pairs]
        result = dict(pairs)
        if len(result) == len(pairs):
            return result
        duplicates = True
        return _Duplicated(pairs)

    try:
        document = json.loads(content, object_pairs_hook=pairs_hook, parse_constant=_reject_constant)
    except RecursionError:
        raise UninspectableBody("JSON is nested too deeply to inspect") from None
    except ValueError as exc:  # includes UnicodeDecodeError and over-long integers
        raise UninspectableBody(f"invalid JSON: {exc}") from None
    if not duplicates:
        return document
    try:
        return Variants(tuple(_variants(document)))
    except RecursionError:
        raise UninspectableBody("JSON with duplicate keys is nested too deeply to inspect") from None


def _variants(value: Any) -> Iterator[Any]:
    options = _options(value)
    if len(options) > MAX_VARIANTS:
        raise UninspectableBody(f"duplicate keys allow more than {MAX_VARIANTS} readings of the body")
    return iter(options)


def _options(value: Any) -> list[Any]:
    """Every way of reading ``value`` (bounded by MAX_VARIANTS + 1)."""
    if isinstance(value, _Duplicated):
        by_key: dict[str, list[Any]] = {}
        for key, item in value.pairs:
            by_key.setdefault(key, []).extend(_options(item))
        return _combine(list(by_key), list(by_key.values()), dict)
    if isinstance(value, dict):
        return _combine(list(value), [_options(v) for v in value.values()], dict)
    if isinstance(value, list):
        return _combine(list(range(len(value))), [_options(v) for v in value], None)
    return [value]


def _combine(keys: list[Any], choices: list[list[Any]], kind: type | None) -> list[Any]:
    count = 1
    for options in choices:
        count *= len(options)
        if count > MAX_VARIANTS:
            raise UninspectableBody(
                f"duplicate keys allow more than {MAX_VARIANTS} readings of the body"
            )
    results = []
    for picked in product(*choices):
        results.append(dict(zip(keys, picked, strict=True)) if kind is dict else list(picked))
    return results


def combine(keys: list[Any], choices: list[list[Any]], kind: type | None) -> list[Any]:
    """Every dict (kind=dict) or list (kind=None) picking one option per key, bounded by
    MAX_VARIANTS (raises UninspectableBody beyond)."""
    return _combine(keys, choices, kind)
