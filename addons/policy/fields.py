"""One field model of a request: every place a framework reads ``amount`` from.

A `json` condition on ``$.amount`` is only a control if the upstream cannot take
``amount`` from somewhere the policy did not look. Express (``express.json()``,
``express.urlencoded({extended: true})``, multer), PHP, Flask and Go read fields from
the JSON body, form bodies, multipart fields and the query string, with bracket names
(``amount[]=``, ``a[b]=``) building arrays and objects. So a request's fields are read
here from all of them into JSON-shaped documents:

* **JSON body** (declared ``*/json``/``*+json``, or untyped starting with ``{``/``[``):
  parsed strictly (addons.core.jsonbody).
* **``application/x-www-form-urlencoded`` body** and the **query string**: ``&``-separated
  ``name=value``, ``+`` is a space, percent-escapes are UTF-8 (invalid UTF-8 refuses).
* **``multipart/form-data``**: every part without a ``filename`` is a field (UTF-8 text);
  file parts' contents are not fields.
* **Bracket names**, as qs (Express) and PHP build them: ``a[b][c]=1`` is
  ``{"a": {"b": {"c": "1"}}}``, ``a[]=1&a[]=2`` is ``{"a": ["1", "2"]}``, ``a[0]=x`` and
  ``a[1]=y`` make a list in index order (qs compacts sparse indices, so ``a[5]=x`` is
  ``["x"]``). A name that is not well-formed brackets is a plain key.

A field given more than once is ambiguous, because frameworks disagree on which copy
counts (qs makes ``amount=5&amount=5000`` a list, Flask reads the first, PHP the last),
and so is a field in two places (query and body: Flask's ``request.values`` and PHP's
``$_REQUEST`` merge them, each its own way). Every such reading becomes one document of
a :class:`~addons.core.jsonbody.Variants`, and a condition must give the same answer for
all of them or the request is refused, as for duplicate JSON keys.

Keys are case-folded everywhere (``Amount``, ``AMOUNT`` and ``amount`` are one field:
Go's JSON decoder and others match case-insensitively), so case variants are duplicates.

Plain data in (content type, decoded body bytes, raw query string), no mitmproxy here.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from addons.core.jsonbody import (
    MAX_VARIANTS,
    UninspectableBody,
    UnsupportedCharset,
    Variants,
    combine,
    declared_charset,
    declares_json,
    json_text,
    looks_like_json,
    parse_strict,
)

#: A form or query string with more fields than this is not evaluated (bounded work).
MAX_FIELDS = 10_000
#: Bracket nesting deeper than this is refused (PHP's max_input_nesting_level is 64).
MAX_DEPTH = 32

_BRACKETS = re.compile(r"([^\[\]]*)((?:\[[^\[\]]*\])*)")


def readings(content_type: str, content: bytes, query: str) -> tuple[Any, ...]:
    """Every reading of the request's fields: one document per way an upstream may read them.

    ``content`` is the body with Content-Encoding undone; ``query`` the raw query string
    (without ``?``). Raises UninspectableBody (UnsupportedCharset for charsets) when a
    part of the request that may carry fields cannot be read unambiguously.
    """
    sources: list[tuple[Any, ...]] = []
    body = body_readings(content_type, content)
    if body:
        sources.append(body)
    if query:
        sources.append(query_readings(query))
    if not sources:
        return ({},)
    if len(sources) == 1:
        return sources[0]
    out: list[Any] = []
    for body_doc in sources[0]:
        for query_doc in sources[1]:
            out.extend(merge(body_doc, query_doc))
    return _bounded(out)


def query_readings(query: str) -> tuple[Any, ...]:
    """The query string's fields (see the module doc)."""
    return _form_readings(_split_pairs(query))


def body_readings(content_type: str, content: bytes) -> tuple[Any, ...]:
    """The body's fields; () for an empty body. Raises for a body that may carry fields
    the policy cannot read (unknown type, bad charset, malformed)."""
    if not content:
        return ()
    media = content_type.split(";", 1)[0].strip().lower()
    if declares_json(content_type) or (media in ("", "text/plain") and looks_like_json(content)):
        document = parse_strict(json_text(content, content_type), fold_case=True)
        return document.documents if isinstance(document, Variants) else (document,)
    if media == "application/x-www-form-urlencoded":
        _require_utf8(content_type)
        return _form_readings(_split_pairs(_utf8(content, "form body")))
    if media == "multipart/form-data":
        _require_utf8(content_type)
        return _form_readings(multipart_fields(content, _boundary(content_type)))
    raise UninspectableBody(
        f"cannot read fields from a body of type {media or '(none)'!r}; "
        "send JSON, a form or multipart/form-data"
    )


# --- forms, query strings and bracket names ---------------------------------------


def _require_utf8(content_type: str) -> None:
    charset = declared_charset(content_type)
    if charset not in (None, "utf-8"):
        raise UnsupportedCharset(f"charset {charset!r} is not supported for form bodies; send UTF-8")


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UninspectableBody(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _split_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_unquote(name), _unquote(value)))
        if len(pairs) > MAX_FIELDS:
            raise UninspectableBody(f"more than {MAX_FIELDS} fields")
    return pairs


def _unquote(text: str) -> str:
    data = unquote_to_bytes(text.replace("+", " "))
    return _utf8(data, "a percent-escaped field")


def split_name(name: str) -> list[str]:
    """``a[b][]`` -> ``['a', 'b', '']`` (keys case-folded); a malformed name is one key."""
    match = _BRACKETS.fullmatch(name)
    if match is None or not match.group(1):
        return [name.casefold()]
    keys = [match.group(1)]
    if match.group(2):
        keys += match.group(2)[1:-1].split("][")
    if len(keys) > MAX_DEPTH:
        raise UninspectableBody(f"field name nested deeper than {MAX_DEPTH} brackets")
    return [key.casefold() for key in keys]


class _Node:
    """Occurrences of each key while a form is read: strings, sub-nodes, appends."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, list[Any]] = {}


class _Append:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _form_readings(pairs: list[tuple[str, str]]) -> tuple[Any, ...]:
    root = _Node()
    for name, value in pairs:
        _insert(root, split_name(name), value)
    return _bounded(_resolve(root))


def _insert(node: _Node, keys: list[str], value: str) -> None:
    key, rest = keys[0], keys[1:]
    slot = node.entries.setdefault(key, [])
    if not rest:
        slot.append(value)
        return
    if rest == [""]:  # name[] appends
        slot.append(_Append(value))
        return
    if rest[0] == "":  # name[][b]: an object appended; read as a new element
        child = _Node()
        _insert(child, rest[1:], value)
        slot.append(_Append(child))
        return
    child = next((e for e in slot if isinstance(e, _Node)), None)
    if child is None:
        child = _Node()
        slot.append(child)
    _insert(child, rest, value)


def _resolve(node: _Node) -> list[Any]:
    """Every document the node may be read as (bounded)."""
    keys = list(node.entries)
    choices = [_key_options(node.entries[key]) for key in keys]
    documents = combine(keys, choices, dict)
    if keys and all(key.isdigit() for key in keys):  # a[0]=x&a[1]=y: a list (qs, PHP)
        order = sorted(range(len(keys)), key=lambda i: int(keys[i]))
        return [[doc[keys[i]] for i in order] for doc in documents]
    return documents


def _key_options(entries: list[Any]) -> list[Any]:
    plain = [e for e in entries if isinstance(e, str)]
    appended = [e.value for e in entries if isinstance(e, _Append)]
    nodes = [e for e in entries if isinstance(e, _Node)]
    options: list[Any] = []
    for node in nodes:
        options.extend(_resolve(node))
    if appended:
        items = [_resolve(v) if isinstance(v, _Node) else [v] for v in appended]
        options.extend(combine(list(range(len(items))), items, None))
    if len(plain) == 1 and not options:
        return plain
    if plain:
        options.extend(plain)  # each copy alone (Flask reads the first, PHP the last)
        options.append([*plain, *appended])  # all of them (qs, PHP's name[])
    return _unique(options)


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if not any(_same_json(value, seen) for seen in out):
            out.append(value)
    return out


def _same_json(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _bounded(documents: list[Any]) -> tuple[Any, ...]:
    unique = _unique(documents)
    if len(unique) > MAX_VARIANTS:
        raise UninspectableBody(f"repeated fields allow more than {MAX_VARIANTS} readings of the request")
    return tuple(unique)


# --- multipart/form-data ----------------------------------------------------------


def _boundary(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"')
            if value and len(value) <= 200:
                return value
    raise UninspectableBody("multipart/form-data without a usable boundary")


def multipart_fields(content: bytes, boundary: str) -> list[tuple[str, str]]:
    """The (name, text) of every non-file part; malformed multipart raises."""
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = content.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise UninspectableBody("malformed multipart/form-data body (no closing boundary)")
    fields: list[tuple[str, str]] = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise UninspectableBody("malformed multipart/form-data part")
        head, sep, value = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise UninspectableBody("multipart/form-data part without headers")
        headers = _part_headers(_utf8(head, "a multipart header"))
        disposition = headers.get("content-disposition", "")
        params = _disposition_params(disposition)
        if not disposition.lower().startswith("form-data") or "name" not in params:
            raise UninspectableBody("multipart/form-data part without a form-data name")
        if "filename" in params or "filename*" in params:
            continue  # a file: its contents are not a field
        _require_utf8(headers.get("content-type", ""))
        fields.append((params["name"], _utf8(value, f"multipart field {params['name']!r}")))
        if len(fields) > MAX_FIELDS:
            raise UninspectableBody(f"more than {MAX_FIELDS} fields")
    return fields


def _part_headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            raise UninspectableBody("malformed multipart/form-data part header")
        key = name.strip().lower()
        if key in headers:
            raise UninspectableBody(f"multipart part repeats its {key} header")
        headers[key] = value.strip()
    return headers


_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def _disposition_params(disposition: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in _PARAM.finditer(disposition):
        name = match.group(1).lower()
        if name in params:
            raise UninspectableBody(f"multipart part repeats its {name} parameter")
        quoted = match.group(2)
        params[name] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group(3)
    return params


# --- merging places ---------------------------------------------------------------


def merge(a: Any, b: Any) -> list[Any]:
    """Readings of two places together: objects merge key by key; where both hold a key
    with different values, either may be the one the upstream reads."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        choices = [
            merge(a[k], b[k]) if k in a and k in b else [a[k] if k in a else b[k]] for k in keys
        ]
        return combine(keys, choices, dict)
    if _same_json(a, b):
        return [a]
    return [a, b]
