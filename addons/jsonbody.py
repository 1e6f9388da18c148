"""Reading a request body as JSON for `json` conditions, without being fooled or stalled.

An agent controls the body, and the upstream's JSON parser may be more lenient than
ours. The rules here keep a `json` condition from being dodged:

* Bodies are parsed strictly (no NaN/Infinity, valid UTF-8, numbers Python can hold).
  A body that is declared JSON (``Content-Type: */json`` or ``*+json``) or looks like
  it (starts with ``{`` or ``[``) but does not parse is *uninspectable*: the policy
  then blocks the request rather than guess what a lenient upstream would read.
* Duplicate keys (``{"amount": 5, "amount": 5000}``) are kept: every combination of
  the duplicates is a *variant* of the document, and a condition must give the same
  answer for all of them (see :class:`Variants`), whichever copy the upstream reads.
* Size, decompression and nesting are bounded: a body larger than MAX_JSON_BODY
  (before or after ``Content-Encoding``), a compression bomb, an encoding we cannot
  decode, or nesting deeper than Python's recursion limit is uninspectable.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from typing import Any

from mitmproxy import http

#: Bodies larger than this (raw or decoded) are not parsed for `json` conditions.
MAX_JSON_BODY = 16 * 1024 * 1024
#: A document with more duplicate-key combinations than this is not evaluated.
MAX_VARIANTS = 64


class UninspectableBody(Exception):
    """The body exists but cannot be examined safely; callers fail closed."""


class _NotJson:
    def __repr__(self) -> str:
        return "NOT_JSON"


#: The body is absent or plainly not JSON (e.g. a form post): `json` conditions don't hold.
NOT_JSON: Any = _NotJson()


@dataclass(frozen=True)
class Variants:
    """A document with duplicate keys: one entry per way of resolving the duplicates."""

    documents: tuple[Any, ...]


def read_json_body(message: http.Message) -> Any:
    """The body as a JSON value, :class:`Variants`, or NOT_JSON.

    Raises UninspectableBody when the body cannot be examined (see the module doc).
    """
    raw = message.raw_content
    if raw is None:
        raise UninspectableBody("the body was streamed and cannot be inspected")
    if not raw:
        return NOT_JSON
    if len(raw) > MAX_JSON_BODY:
        raise UninspectableBody(f"body of {len(raw)} bytes is too large to inspect")
    content = decode_bounded(raw, message.headers.get("content-encoding", ""), MAX_JSON_BODY)
    declared = _declares_json(message.headers.get("content-type", ""))
    try:
        return parse_strict(content)
    except UninspectableBody:
        if declared or _looks_like_json(content):
            raise
        return NOT_JSON


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


def _declares_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.endswith("/json") or media.endswith("+json")


def _looks_like_json(content: bytes) -> bool:
    return content.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"[")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _Duplicated:
    """An object that had a repeated key: its (key, value) pairs in document order."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def parse_strict(content: bytes) -> Any:
    """Parse JSON strictly; duplicate keys give :class:`Variants`."""
    duplicates = False

    def pairs_hook(pairs: list[tuple[str, Any]]) -> Any:
        nonlocal duplicates
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
