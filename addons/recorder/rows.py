"""Turn a flow and its Portcullis state into a ``flows`` row, with every secret redacted.

:func:`flow_row` takes a cheap snapshot on the event loop (references to immutable
header tuples and body bytes) and returns a function that does the expensive part —
decoding, redacting, capping, JSON — on the writer thread.

Secrets: the values of ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
``Set-Cookie`` and every header the gateway injected become ``[redacted]``, and every
literal secret value (plus its URL- and JSON-escaped forms) is replaced wherever it
appears: path, query, any header, either body. Bodies are redacted *before* they are
capped, so a cap can never leave half a secret behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import quote, quote_plus

from mitmproxy import http
from mitmproxy.net import encoding

from addons.core.flowstate import FlowState
from addons.core.secretforms import REDACTED, detail_query_secrets, query_secrets
from recordings.store import micros

ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

HeaderFields = tuple[tuple[bytes, bytes], ...]


class Redactor:
    """Replaces every known secret value, in the forms it may take on the wire."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms.update({secret, quote(secret, safe=""), quote_plus(secret),
                              json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]})
        # Longest first, so a secret that contains another is replaced whole.
        self.forms = sorted(forms, key=len, reverse=True)
        self.byte_forms = [form.encode() for form in self.forms]

    def text(self, value: str) -> str:
        for form in self.forms:
            if form in value:
                value = value.replace(form, REDACTED)
        return value

    def data(self, value: bytes) -> bytes:
        for form in self.byte_forms:
            if form in value:
                value = value.replace(form, REDACTED.encode())
        return value

    def deep(self, value: Any) -> Any:
        """Redact strings anywhere in a JSON-like structure (event details)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.deep(v) for v in value]
        return value


@lru_cache(maxsize=256)
def redactor_for(secrets: frozenset[str]) -> Redactor:
    """Most flows share the same few secrets (or none): build each Redactor once."""
    return Redactor(secrets)


def headers_json(fields: HeaderFields, redactor: Redactor, hidden: frozenset[str]) -> str:
    """Headers as a JSON object: lower-case name -> value (repeats joined with ", ")."""
    out: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1").lower()
        value = REDACTED if name in hidden else redactor.text(raw_value.decode("utf-8", "replace"))
        out[name] = f"{out[name]}, {value}" if name in out else value
    return json.dumps(out, ensure_ascii=False)


def hidden_values(fields: HeaderFields, hidden: frozenset[str]) -> set[str]:
    """The values of redacted headers, whole and without their scheme ("Bearer x" -> "x")."""
    values: set[str] = set()
    for raw_name, raw_value in fields:
        if raw_name.decode("latin-1").lower() in hidden:
            value = raw_value.decode("utf-8", "replace").strip()
            values.add(value)
            values.update(part for part in value.replace(";", " ").split()[1:] if len(part) >= 8)
    return values


def body_columns(raw: bytes | None, content_encoding: str | None, cap: int,
                 redactor: Redactor) -> tuple[str | None, bytes | None, int | None, bool]:
    """(text, blob, size, truncated) for a body: text when it is UTF-8, else a blob."""
    if raw is None:
        return None, None, None, False
    content = raw
    if content_encoding:
        try:
            content = encoding.decode(raw, content_encoding)
        except ValueError:
            content = raw  # store what was sent rather than nothing
    if isinstance(content, str):
        content = content.encode()
    size = len(content)
    content = redactor.data(content)
    truncated = len(content) > cap
    part = content[:cap]
    text = _as_text(part, truncated)
    return (text, None, size, truncated) if text is not None else (None, part, size, truncated)


def _as_text(data: bytes, truncated: bool) -> str | None:
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cap may cut a multi-byte character in two: drop the broken tail only.
        if truncated and exc.start >= len(data) - 3:
            try:
                return data[: exc.start].decode("utf-8")
            except UnicodeDecodeError:
                return None
        return None


def _deciding_first(rules: Iterable[str], deciding: str | None) -> list[str]:
    """Matched rule names with the rule that decided first (``rules[1]`` in SQL)."""
    rules = list(rules)
    if deciding in rules:
        rules.remove(deciding)
        rules.insert(0, deciding)
    return rules


def _content_encoding(fields: HeaderFields) -> str | None:
    for name, value in fields:
        if name.lower() == b"content-encoding":
            return value.decode("latin-1")
    return None


def client_address(address: Any) -> str | None:
    if not address:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def flow_row(flow: http.HTTPFlow, state: FlowState, decision: str, cap: int,
             secrets: Iterable[str]) -> FlowRow:
    """Snapshot the flow now; calling the result builds the row (in the recording process).

    The snapshot is the raw values only (one tuple, no dict, no conversions): it is taken
    on the event loop for every flow, so everything else waits for :meth:`FlowRow.__call__`.
    """
    request, response, error = flow.request, flow.response, flow.error
    # A streamed response has no body here: record what the stream sent the agent.
    sent = state.sent if response is not None and response.raw_content is None else None
    verdict_rule = state.verdict.rule if state.verdict is not None else None
    facts = (flow.id, request.timestamp_start, response.timestamp_end if response else None,
             error.timestamp if error else None, time.time(), state.identity, state.actor,
             flow.client_conn.peername, state.session_id, request.method, request.scheme,
             request.host, request.port, request.path, response.status_code if response else None,
             decision, tuple(state.rules), verdict_rule.name if verdict_rule is not None else None,
             state.reason, state.error, error.msg if error else None, state.replay_of, state.masked)
    # The known secrets' tuple is shared by every flow (pickled once per batch); the union
    # with this flow's own, and the query's, is made where the row is built.
    return FlowRow(facts, tuple(state.injected_headers) if state.injected_headers else (),
                   secrets if isinstance(secrets, tuple) else tuple(secrets),
                   tuple(state.secrets) if state.secrets else (),
                   (request.headers.fields, request.raw_content),
                   (response.headers.fields, bytes(sent.data) if sent else response.raw_content)
                   if response else None,
                   cap, sent.size if sent is not None and not sent.complete else None)


class FlowRow(NamedTuple):
    """What :func:`flow_row` snapshot on the event loop; calling it builds the row.

    A plain picklable value (a tuple: headers are tuples of bytes, bodies bytes), so the
    work can happen in the recording process (recordings/sink.py), away from the proxy's GIL.
    """

    #: (id, started, response end, error time, now, identity, actor, peername, session_id,
    #: method, scheme, host, port, path with query, status, decision, rules, deciding rule,
    #: reason, state error, flow error, replay_of, masked)
    facts: tuple
    injected: tuple[str, ...]  # header names the gateway injected (redacted like Authorization)
    known: tuple[str, ...]  # secrets seen in any flow
    own: tuple[str, ...]  # this flow's (injected credentials)
    request_parts: tuple[HeaderFields, bytes | None]
    response_parts: tuple[HeaderFields, bytes | None] | None
    cap: int
    sent_incomplete_size: int | None  # a stream longer than its capture: its full size

    @property
    def hidden(self) -> frozenset[str]:
        return ALWAYS_REDACTED | {name.lower() for name in self.injected} if self.injected else ALWAYS_REDACTED

    def snapshot(self) -> dict[str, Any]:
        """The row's plain columns (no headers or bodies), not yet redacted."""
        (flow_id, started, response_end, error_at, now, identity, actor, peername, session_id, method,
         scheme, host, port, _, status, decision, rules, deciding, reason, state_error, flow_error,
         replay_of, masked) = self.facts
        ended = response_end or error_at or now
        return {
            "id": flow_id, "started_at": micros(started), "ended_at": micros(ended),
            "duration_ms": round((ended - started) * 1000, 3) if started else None,
            "identity": identity, "actor": actor, "client_addr": client_address(peername),
            "session_id": session_id, "method": method, "scheme": scheme, "host": host, "port": port,
            "status_code": status, "decision": decision, "rules": _deciding_first(rules, deciding),
            "reason": reason, "error": state_error or flow_error, "replay_of": replay_of, "masked": masked,
        }

    def __call__(self) -> dict[str, Any]:
        request_parts, response_parts, hidden = self.request_parts, self.response_parts, self.hidden
        path, _, query = self.facts[13].partition("?")
        # Credentials in the query string (?api_key=...) are redacted like headers' (issue 16).
        secrets = {*self.known, *self.own} | query_secrets(query)
        # A redacted header's value is a secret everywhere: upstreams echo them in bodies.
        redactor = redactor_for(frozenset(
            secrets | hidden_values(request_parts[0], hidden)
            | (hidden_values(response_parts[0], hidden) if response_parts else set())))
        row = self.snapshot()
        row["path"] = redactor.text(path)
        row["query"] = redactor.text(query) if query else None
        row["host"] = redactor.text(row["host"])
        for prefix, parts in (("request", request_parts), ("response", response_parts)):
            if parts is None:
                continue
            fields, raw = parts
            row[f"{prefix}_headers"] = headers_json(fields, redactor, hidden)
            (row[f"{prefix}_body"], row[f"{prefix}_body_blob"], row[f"{prefix}_size"],
             row[f"{prefix}_truncated"]) = body_columns(raw, _content_encoding(fields), self.cap, redactor)
        if self.sent_incomplete_size is not None:  # longer than the capture kept
            row["response_size"], row["response_truncated"] = self.sent_incomplete_size, True
        for name in ("reason", "error", "session_id", "identity", "actor"):
            if isinstance(row[name], str):
                row[name] = redactor.text(row[name])
        return row


def event_row(flow_id: str, kind: str, at: float, actor: str, detail: dict[str, Any],
              secrets: Iterable[str], seq: int) -> dict[str, Any]:
    # An event's URL or query may carry ?api_key=...: redacted like the flow's query.
    redactor = redactor_for(frozenset(secrets) | detail_query_secrets(detail))
    text = json.dumps(detail, ensure_ascii=False, default=str)
    if redactor.forms:
        # Redact the decoded values, not the JSON text, so the result stays valid JSON.
        text = json.dumps(redactor.deep(json.loads(text)), ensure_ascii=False)
    return {"seq": seq, "flow_id": flow_id, "at": micros(at), "actor": redactor.text(str(actor)),
            "kind": kind, "detail": text}
