"""JSON-RPC 2.0 as MCP's Streamable HTTP carries it: messages in request bodies, and SSE.

A POST body is one JSON-RPC message or a batch (a JSON array of them; revision
2025-03-26 allowed batches, later ones dropped them, servers and intermediaries still
meet them). The gateway judges every element of a batch (addons.mcp.rules), so this
module only says which documents are JSON-RPC requests and what each element asks.

Plain data in, plain data out: no mitmproxy here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Methods whose `params.name` names what is called (Mcp-Name mirrors it).
NAMED_METHODS = frozenset({"tools/call", "prompts/get"})
#: Methods whose `params.uri` names what is read (Mcp-Name mirrors it).
URI_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})

METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"


class NotJsonRpc(ValueError):
    """A document that looks like JSON-RPC but cannot be judged (fail closed)."""


@dataclass(frozen=True)
class Message:
    """One JSON-RPC request or notification (``has_id`` False) of a body."""

    method: str
    params: Any
    has_id: bool
    id: Any = None

    @property
    def name(self) -> Any:
        """``params.name`` (tools, prompts), or None."""
        return self.params.get("name") if isinstance(self.params, dict) else None

    @property
    def uri(self) -> Any:
        return self.params.get("uri") if isinstance(self.params, dict) else None

    @property
    def arguments(self) -> Any:
        if not isinstance(self.params, dict):
            return None
        return self.params.get("arguments")

    @property
    def target(self) -> Any:
        """What Mcp-Name mirrors for this method (name or uri), or None."""
        if self.method in NAMED_METHODS:
            return self.name
        if self.method in URI_METHODS:
            return self.uri
        return None


def _is_message(item: Any) -> bool:
    return isinstance(item, dict) and item.get("jsonrpc") == "2.0" and "method" in item


def is_jsonrpc(document: Any) -> bool:
    """A JSON-RPC request, notification, or a non-empty batch with one of them."""
    if isinstance(document, list):
        return bool(document) and any(_is_message(item) for item in document)
    return _is_message(document)


def messages(document: Any) -> list[Message] | None:
    """The messages of a JSON-RPC request body; None when it is not JSON-RPC.

    Raises NotJsonRpc for a JSON-RPC body whose method is not a string, or a batch with an
    element that is not a JSON-RPC message: such a body cannot be judged element by
    element, and the policy refuses it.
    """
    if not is_jsonrpc(document):
        return None
    items = document if isinstance(document, list) else [document]
    out = []
    for i, item in enumerate(items):
        if not _is_message(item):
            raise NotJsonRpc(f"element {i} of the JSON-RPC batch is not a JSON-RPC request")
        method = item["method"]
        if not isinstance(method, str):
            raise NotJsonRpc("the JSON-RPC method is not a string")
        out.append(Message(method, item.get("params"), "id" in item, item.get("id")))
    return out


def parse(content: bytes) -> Any | None:
    """The body as JSON (UTF-8), or None when it is not JSON."""
    if not content or content.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def request_ids(document: Any) -> tuple[Any, ...]:
    """The ids of the requests in a body (notifications have none), in order."""
    items = document if isinstance(document, list) else [document]
    return tuple(item["id"] for item in items if isinstance(item, dict) and "id" in item)


def canonical(value: Any) -> str:
    """Arguments in one spelling (sorted keys, no spaces): what a re-sent call is
    compared by."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- server-sent events ---------------------------------------------------------------


def sse_event(message: Any, event: str = "message") -> bytes:
    """One SSE event carrying a JSON-RPC message (MCP's Streamable HTTP framing)."""
    return f"event: {event}\ndata: {json.dumps(message, ensure_ascii=False)}\n\n".encode()


def sse_comment(text: str = "keepalive") -> bytes:
    return f": {text}\n\n".encode()


@dataclass
class SseEvent:
    """One parsed event: its field lines as given (so unchanged events re-serialise as
    they came) and its data."""

    lines: list[str]

    @property
    def data(self) -> str | None:
        parts = [line[5:].removeprefix(" ") for line in self.lines if line.startswith("data:")]
        return "\n".join(parts) if parts else None

    def with_data(self, data: str) -> SseEvent:
        kept = [line for line in self.lines if not line.startswith("data:")]
        return SseEvent(kept + [f"data: {part}" for part in data.split("\n")])

    def serialise(self) -> str:
        return "\n".join(self.lines) + "\n\n"


def sse_events(text: str) -> Iterator[SseEvent]:
    """The events of an SSE body (blank-line separated; CRLF, CR or LF line ends)."""
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if lines:
                yield SseEvent(lines)
                lines = []
        else:
            lines.append(line)
    if lines:
        yield SseEvent(lines)
