"""Canonical forms of hosts and paths, so that rules cannot be dodged by spelling.

Matching always runs on these forms; the request that is forwarded is left as the
agent sent it. See docs/rules.md ("Normalisation") for the list of what is folded.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote_to_bytes

_SLASHES = re.compile(r"/{2,}")


def normalize_host(host: str) -> str:
    """Lower-case, drop a trailing dot, IDNA-encode unicode, canonicalise IP literals."""
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # not valid IDNA: match on the lower-cased unicode form
    return host


def normalize_path(raw: str) -> str:
    """Decode percent-escapes once, collapse repeated slashes, resolve dot segments.

    The query string (anything after '?') is dropped. Bytes that are not UTF-8 are
    kept as surrogate escapes so that they can never accidentally equal a rule's text.
    """
    path = raw.split("?", 1)[0].split("#", 1)[0]
    path = unquote_to_bytes(path).decode("utf-8", "surrogateescape")
    path = path.replace("\\", "/")
    if not path.startswith("/"):
        path = "/" + path
    trailing = path.endswith("/") and len(path) > 1
    parts: list[str] = []
    for segment in _SLASHES.sub("/", path).split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    result = "/" + "/".join(parts)
    if trailing and result != "/":
        result += "/"
    return result
