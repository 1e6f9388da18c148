"""What an approval or a grant is bound to, and what the reviewer is shown.

A reviewer approves what the review page shows; the gateway then forwards a request.
Those must be the same request, or an agent could have one thing approved and another
executed (add ``X-HTTP-Method-Override: DELETE`` when collecting an approved ``POST``).
So an approval and a grant are bound to a :class:`RequestPrint`:

* the method, the URL (scheme, authority, path and query, as the policy saw them) and
  the SHA-256 of the body bytes as they will be forwarded;
* **every end-to-end header, in order and multiplicity**: names compared
  case-insensitively (HTTP/2 lower-cases them, so a hold made over HTTP/1.1 can be
  collected over h2), values byte for byte. Left out are only the headers that are
  not part of the request's meaning: the hop-by-hop ones (``Connection``,
  ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
  ``Upgrade``), the gateway's own ``X-Portcullis-*`` control headers (stripped before
  forwarding), ``Host`` (the URL binds the authority; h2 carries it as ``:authority``)
  and ``Content-Length`` (the body hash binds the body, and the length follows from it).
  Headers that ``Connection`` names *are* bound: mitmproxy forwards them, so the
  upstream would act on them.

and to a :class:`VerdictPrint`: the rules the held request matched, the action and
the approvers. A collecting request, or one a grant would let through, is evaluated by
the policy again; if it matches other rules (a header that triggers a stricter hold, a
rules edit since), the approval does not cover it.

Values of secret headers are never kept: the print stores a hash of each value.

The body is shown to reviewers decoded the one way the policy decodes it (Content-
Encoding undone, then UTF-8/16/32 detected as RFC 8259 and ``json.loads`` do), never
with the charset the request declares: ``charset=utf-7`` must not show the reviewer a
different document than the policy evaluated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from addons.core import jsonbody
from addons.core.flowstate import CONTROL_HEADER_PREFIX
from addons.holds.spec import HoldSpec

#: Hop-by-hop headers (RFC 9110 7.6.1) plus the legacy Keep-Alive/Proxy-Connection.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
#: Bound by other parts of the print (see the module docstring).
BOUND_ELSEWHERE = frozenset({"host", "content-length"})


def sha256(data: bytes | str | None) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return hashlib.sha256(data or b"").hexdigest()


def is_bound_header(name: str) -> bool:
    lowered = name.lower()
    return not (lowered in HOP_BY_HOP or lowered in BOUND_ELSEWHERE or lowered.startswith("proxy-")
                or lowered.startswith(CONTROL_HEADER_PREFIX))


@dataclass(frozen=True)
class RequestPrint:
    """The parts of a request an approval is bound to (see the module docstring)."""

    method: str
    url: str
    body_sha256: str
    headers: tuple[tuple[str, str], ...]  # (lower-cased name, SHA-256 of the value), in order

    @classmethod
    def of(cls, request: http.Request) -> RequestPrint:
        return cls(
            method=request.method.upper(),
            url=request.pretty_url,
            body_sha256=sha256(request.raw_content),
            headers=tuple((name.lower(), sha256(value)) for name, value in request.headers.items(multi=True)
                          if is_bound_header(name)),
        )

    def difference(self, other: RequestPrint) -> str | None:
        """None when ``other`` is the same request; else what differs (no header values)."""
        if other.method != self.method:
            return f"the method differs ({other.method}, approved {self.method})"
        if other.url != self.url:
            return "the URL differs from the approved one"
        if other.body_sha256 != self.body_sha256:
            return "the body differs from the approved one"
        if other.headers == self.headers:
            return None
        held_names = [name for name, _ in self.headers]
        now_names = [name for name, _ in other.headers]
        added = sorted(set(now_names) - set(held_names))
        if added:
            return f"header {', '.join(added)} was not in the approved request"
        removed = sorted(set(held_names) - set(now_names))
        if removed:
            return f"header {', '.join(removed)} of the approved request is missing"
        changed = sorted({a[0] for a, b in zip(self.headers, other.headers, strict=False) if a != b}
                         | {n for n in set(now_names) if now_names.count(n) != held_names.count(n)})
        return f"header {', '.join(changed)} differs (value, order or count) from the approved request"


@dataclass(frozen=True)
class VerdictPrint:
    """What the policy decided for a held request: rules, action and who may approve."""

    action: str
    rule: str | None
    matched: tuple[str, ...]
    approvers: tuple[str, ...] | None
    approvals_required: int
    escalate_to: tuple[str, ...]

    @classmethod
    def of(cls, verdict: Any, spec: HoldSpec) -> VerdictPrint:
        return cls(
            action=verdict.action,
            rule=spec.rule,
            matched=tuple(verdict.rule_names),
            approvers=tuple(sorted(spec.approvers)) if spec.approvers is not None else None,
            approvals_required=spec.approvals_required,
            escalate_to=tuple(sorted(spec.escalate_to)),
        )

    def difference(self, other: VerdictPrint) -> str | None:
        if other == self:
            return None
        if other.matched != self.matched:
            return (f"the request now matches rules [{', '.join(other.matched)}], "
                    f"approved under [{', '.join(self.matched)}]")
        return "the rules now ask for other approvers than those who approved"


# --- what the reviewer is shown -------------------------------------------------------


@dataclass(frozen=True)
class DecodedBody:
    """The body's text as the policy reads it, or why it cannot be read (decoded once per hold)."""

    raw: bytes
    text: str | None
    error: str | None = None


@dataclass(frozen=True)
class ShownBody:
    text: str  # at most `limit` characters
    truncated: bool
    warning: str | None  # why the reviewer should download the exact bytes


def _policy_text(request: http.Request) -> str:
    """The body decoded the way the policy decodes it.

    Uses ``jsonbody.decoded_body_text`` when that module offers it (one decoder for the
    policy and the reviewer); until then the same steps locally: Content-Encoding
    undone with the policy's bounds, then the RFC 8259 encoding detection that
    ``json.loads`` applies to bytes. Raises UnicodeDecodeError or UninspectableBody.
    """
    shared = getattr(jsonbody, "decoded_body_text", None)
    if shared is not None:
        return shared(request)
    raw = request.raw_content or b""
    data = jsonbody.decode_bounded(raw, request.headers.get("content-encoding", ""), jsonbody.MAX_JSON_BODY)
    return data.decode(json.detect_encoding(data))


def decode_body(request: http.Request) -> DecodedBody:
    raw = request.raw_content or b""
    if not raw:
        return DecodedBody(raw, "")
    try:
        return DecodedBody(raw, _policy_text(request))
    except (UnicodeDecodeError, jsonbody.UninspectableBody) as exc:
        return DecodedBody(raw, None, str(exc))


def shown_body(body: DecodedBody, limit: int) -> ShownBody:
    """The body as the review page shows it: a decoded prefix and, if needed, a warning."""
    raw, text = body.raw, body.text
    if text is None:
        text = raw.decode("utf-8", "replace")
        warning = (f"The body cannot be decoded as text the way the policy reads it ({body.error}); "
                   "it is shown with replacement characters. Download the exact bytes to review it.")
        return ShownBody(text[:limit], len(text) > limit, warning)
    if len(text) > limit:
        return ShownBody(text[:limit], True,
                         f"Only the first {limit // 1024} KiB of {len(raw):,} bytes are shown. "
                         "Download the exact bytes and review all of it before approving.")
    return ShownBody(text, False, None)


def duplicated_key(body: DecodedBody) -> str | None:
    """The first key that appears twice in one object of a JSON body, else None.

    A reviewer is shown one copy (the page may show only the first 64 KiB; a pretty
    printer keeps only the last copy); the upstream may read the other. Keys that differ
    only by case count as the same key: Go's decoder, among others, matches them
    case-insensitively (``"to"`` then ``"TO"`` sets the field twice). Bodies that are
    not JSON (or cannot be decoded) have no duplicate keys here: the policy has already
    decided what to do with those.
    """
    text = body.text
    if not text:
        return None
    found: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> None:
        if not found:
            seen: set[str] = set()
            for key, _ in pairs:
                if key.casefold() in seen:
                    found.append(key)
                    break
                seen.add(key.casefold())

    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped[:1] not in ("{", "["):
        return None
    try:
        json.loads(stripped, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None
