"""Canonical forms of hosts and paths, so that rules cannot be dodged by spelling.

Matching always runs on these forms; the request that is forwarded is left as the
agent sent it. docs/security.md ("Normalisation") lists what is folded and why.

The guiding rule: two spellings that make the gateway connect to the same place, or
that a common upstream server would route to the same handler, normalise to the same
string. Hosts follow what the gateway's own resolver (glibc ``getaddrinfo``) does with
them; paths follow what typical upstream frameworks do.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import unquote_to_bytes

_SLASHES = re.compile(r"/{2,}")
#: The shapes glibc's inet_aton accepts: 1-4 parts, each decimal, octal (0...) or hex (0x...).
_LOOSE_IPV4 = re.compile(r"(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}")


def normalize_host(host: str) -> str:
    """Lower-case, drop trailing dots, IDNA-encode unicode, canonicalise IP literals.

    IP literals are written the way ``ipaddress`` prints them, whatever form the agent
    used: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1`` and
    ``[::ffff:127.0.0.1]`` all become ``127.0.0.1`` because that is where the gateway
    would connect for each of them.
    """
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.rstrip(".")
    address = _ip_literal(host)
    if address is not None:
        return address
    if not host.isascii():
        try:
            # IDNA 2003 is what Python's socket layer applies before resolving, so this
            # is the name the gateway would actually look up (it also folds full-width
            # digits and letters: "１２７.０.０.１" resolves as 127.0.0.1).
            host = host.encode("idna").decode("ascii").rstrip(".")
        except UnicodeError:
            return host  # not valid IDNA: the gateway cannot resolve it either
        address = _ip_literal(host)
        if address is not None:
            return address
    return host


def _ip_literal(host: str) -> str | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _LOOSE_IPV4.fullmatch(host):
            return None
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None  # e.g. 08.0.0.1 (bad octal): not an address to glibc either
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d reaches the IPv4 host a.b.c.d on a dual-stack socket.
        return str(address.ipv4_mapped)
    return str(address)


def normalize_path(raw: str) -> str:
    """Decode percent-escapes once, collapse repeated slashes, resolve dot segments.

    Also: backslashes count as slashes and ``;parameters`` are cut from each segment
    (servlet containers route ``/a;x=1/b`` as ``/a/b``). The query string (anything
    after '?') and fragment are dropped. Bytes that are not UTF-8 are kept as
    surrogate escapes so that they can never accidentally equal a rule's text.
    Case is kept; path patterns match case-insensitively (see addons.policy.conditions).
    """
    path = raw.split("?", 1)[0].split("#", 1)[0]
    path = unquote_to_bytes(path).decode("utf-8", "surrogateescape")
    path = path.replace("\\", "/")
    if not path.startswith("/"):
        path = "/" + path
    trailing = path.endswith("/") and len(path) > 1
    parts: list[str] = []
    for raw_segment in _SLASHES.sub("/", path).split("/"):
        segment = raw_segment.split(";", 1)[0]
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
