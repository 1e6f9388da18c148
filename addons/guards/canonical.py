"""Is this request one that every upstream reads the same way? Plain data in, a refusal out.

The policy decides on the method, path, host and headers that mitmproxy parsed. That is
only safe if the upstream acts on exactly that request. Two kinds of request break it:

* **Framing bytes inside fields.** HTTP/2 carries each field as a length-prefixed string,
  so ``:method``, ``:path`` or a header value can hold ``\\r\\n``. When mitmproxy
  forwards such a request over HTTP/1.1 it writes the field verbatim, and the upstream
  reads a *second* request the policy never saw (``GET /ok\\r\\n\\r\\nDELETE /v1/tables/x``).
  Over HTTP/1 a bare CR inside a header value (which mitmproxy does not split on) and
  obsolete line folding (which mitmproxy joins into the value as ``\\r\\n ``) are
  forwarded verbatim too; upstreams split them into extra header lines the header rules
  never matched. So any control character (everything below 0x20 but HTAB, and DEL) in a
  header value, and anything but an RFC 9110 token in a method or header name, is refused.
  The request target and the authority may not hold controls or spaces either.
  Percent-encoded ``%0d``, ``%0a`` and ``%00`` in the *path* (not the query) are refused
  as well: a NUL cuts the path short in C-based servers and a trailing newline satisfies
  ``$`` in Python regex routers, so the upstream routes to a handler the policy's path
  did not name. In the query they are ordinary data (a newline in a search term).
* **Method override.** ``X-HTTP-Method-Override``, ``X-HTTP-Method``, ``X-Method-Override``
  (Express ``method-override``, ASP.NET, Google APIs, ...) and a ``_method`` parameter
  (query or form body: Express, Rails, Laravel, Symfony) make the upstream act on another
  method than the request line's. They are refused, not stripped: the policy must judge
  the method the upstream acts on, and silently removing a header would change the
  agent's request behind its back (it would then see a POST's answer to what it thinks
  was a DELETE).

Everything here is pure and cheap (bytes in, a :class:`Refusal` or None out, about
5 µs for a small request: see bench/micro.py), so it runs on every request before any
rule. The mitmproxy side is addons/guards/requestguard.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

#: RFC 9110 token: methods and field names.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: The same sets as bytes, for the fast path (bytes.translate).
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789" + bytes(range(0x41, 0x5b)) + bytes(range(0x61, 0x7b))
_NAME_JOINED_BYTES = _TOKEN_BYTES + b":"  # names are joined with ':' (not a token byte)
_VALUE_BYTES = b"\t" + bytes(range(0x20, 0x7f)) + bytes(range(0x80, 0x100))
_TARGET_BYTES = bytes(range(0x21, 0x7f)) + bytes(range(0x80, 0x100))
#: Controls a field value may not hold: all C0 but HTAB, and DEL. obs-text (0x80+) is legal.
_VALUE_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Bytes a request target or authority may not hold: controls and space.
_TARGET_CONTROL = re.compile(rb"[\x00-\x20\x7f]")
#: Percent-escapes of CR, LF, NUL.
_ESCAPED_CONTROL = re.compile(rb"%(?:0[dDaA0])")

#: Headers that make common frameworks act on a different method (lower case).
OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
_OVERRIDE_HEADERS_BYTES = frozenset(name.encode() for name in OVERRIDE_HEADERS)
#: The parameter name frameworks read the overriding method from (query or form body).
OVERRIDE_PARAM = "_method"
_MULTIPART_OVERRIDE = re.compile(rb'name\s*=\s*"?_method[\["; \r\n]', re.IGNORECASE)


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: a machine-readable ``error`` and a human ``reason``."""

    error: str
    reason: str


def malformed(reason: str) -> Refusal:
    return Refusal("malformed_request", reason)


def check_request_head(
    method: bytes,
    path: bytes,
    authority: bytes,
    host: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    scheme: bytes = b"",
) -> Refusal | None:
    """The first reason this request head is ambiguous to an upstream, or None.

    ``path`` is the request target as sent (path and query); ``authority`` the
    absolute-form / ``:authority`` value (may be empty); ``headers`` the raw fields.
    """
    if not method or method.translate(None, _TOKEN_BYTES):
        return malformed(f"the method {_show(method)} is not an HTTP token "
                         "(control characters, spaces or separators in it)")
    # bytes.translate(None, allowed) deletes every allowed byte: what is left is at
    # fault. It is several times faster than a regex search, and this runs on every
    # request, so each field kind is scanned once, joined; the loops below only run
    # to say which field is at fault.
    if (path + authority + host + scheme).translate(None, _TARGET_BYTES):
        for label, value in (("request target", path), ("authority", authority),
                             ("host", host), ("scheme", scheme)):
            if _TARGET_CONTROL.search(value):
                return malformed(f"the {label} {_show(value)} contains a control character or a space")
    route = path.split(b"?", 1)[0]
    if b"%" in route and _ESCAPED_CONTROL.search(route):
        return malformed(f"the path {_show(route)} contains a percent-encoded CR, LF or NUL")
    fields = headers if isinstance(headers, list | tuple) else list(headers)
    names = [name for name, _ in fields]
    joined = b":".join(names)
    if (not joined.translate(None, _NAME_JOINED_BYTES) and b"" not in names
            and joined.count(b":") == len(names) - 1
            and not b"\t".join([value for _, value in fields]).translate(None, _VALUE_BYTES)
            and b"method" not in joined.lower()):
        return check_query(path)
    for name, value in fields:
        if not _TOKEN.fullmatch(name):
            return malformed(f"the header name {_show(name)} is not an HTTP token "
                             "(control characters, spaces or a colon in it)")
        if bad := _VALUE_CONTROL.search(value):
            if b"\r\n " in value or b"\r\n\t" in value:
                return malformed(f"the header {_show(name)} uses obsolete line folding "
                                 "(a continuation line), which upstreams read differently")
            # The value itself is not quoted: it may be a credential.
            return malformed(f"the value of header {_show(name)} contains the control character "
                             f"{_show(bad.group())} at offset {bad.start()} (CR, LF, NUL and other "
                             "controls are refused)")
        if name.lower() in _OVERRIDE_HEADERS_BYTES:
            return Refusal("method_override_refused",
                           f"the header {name.decode()} asks the upstream to act on another method "
                           f"than {method.decode()}; send the intended method instead")
    return check_query(path)


def check_query(path: bytes) -> Refusal | None:
    """A ``_method`` query parameter (in any case or percent-encoding) is refused."""
    _, sep, query = path.partition(b"?")
    if not sep:
        return None
    lowered = query.lower()
    if b"method" not in lowered and b"%" not in lowered:
        return None  # fast path: no parameter can be named _method
    return _override_in_params(query, "query")


def check_body(content_type: str, body: bytes) -> Refusal | None:
    """A ``_method`` field in a URL-encoded or multipart form body is refused."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        lowered = body.lower()
        if b"method" not in lowered and b"%" not in lowered:
            return None
        return _override_in_params(body, "form body")
    if kind.startswith("multipart/") and _MULTIPART_OVERRIDE.search(body):
        return _refuse_param("multipart body")
    return None


def _override_in_params(encoded: bytes, where: str) -> Refusal | None:
    for pair in re.split(rb"[&;]", encoded):
        name = pair.split(b"=", 1)[0].replace(b"+", b" ")
        decoded = unquote_to_bytes(name).decode("utf-8", "replace").strip().lower()
        # _method, _method[], _method[0]: frameworks differ on brackets, none on the stem.
        if decoded == OVERRIDE_PARAM or decoded.startswith(OVERRIDE_PARAM + "["):
            return _refuse_param(where)
    return None


def _refuse_param(where: str) -> Refusal:
    return Refusal("method_override_refused",
                   f"a {OVERRIDE_PARAM} parameter in the {where} asks the upstream to act on "
                   "another method; send the intended method instead")


def _show(value: bytes, limit: int = 80) -> str:
    """A field for a reason text: escaped, so CR/LF are visible and cannot forge log lines."""
    text = repr(value[:limit])[2:-1]
    return f"'{text}…'" if len(value) > limit else f"'{text}'"
