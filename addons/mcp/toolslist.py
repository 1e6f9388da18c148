"""Remove tools from ``tools/list`` results, in a JSON or an SSE response body.

The model never sees a tool that every call of its identity would be refused: it
cannot waste turns on it, and the list does not advertise what the gateway forbids. Which
tools go is the addon's question to the policy (addons.mcp.addon); this module only
rewrites bodies. A body it cannot read is returned unchanged (the policy still refuses
each call of a hidden tool: filtering is a courtesy, the refusal is the control).

Plain data in and out: no mitmproxy here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from addons.mcp import jsonrpc


def _filter_message(message: Any, hidden: Callable[[str], bool], removed: list[str]) -> bool:
    """Filter one JSON-RPC response in place; True when it changed."""
    if not isinstance(message, dict):
        return False
    result = message.get("result")
    tools = result.get("tools") if isinstance(result, dict) else None
    if not isinstance(tools, list):
        return False
    kept = []
    for tool in tools:
        name = tool.get("name") if isinstance(tool, dict) else None
        if isinstance(name, str) and hidden(name):
            removed.append(name)
        else:
            kept.append(tool)
    if len(kept) == len(tools):
        return False
    result["tools"] = kept
    return True


def _filter_document(document: Any, hidden: Callable[[str], bool], removed: list[str]) -> bool:
    items = document if isinstance(document, list) else [document]
    changed = [_filter_message(item, hidden, removed) for item in items]
    return any(changed)


def filter_body(content: bytes, content_type: str,
                hidden: Callable[[str], bool]) -> tuple[bytes | None, list[str]]:
    """(the new body or None when unchanged, the names removed)."""
    removed: list[str] = []
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None, removed
    if media == "text/event-stream":
        out, changed = [], False
        for event in jsonrpc.sse_events(text):
            data = event.data
            document = _loads(data) if data is not None else None
            if document is not None and _filter_document(document, hidden, removed):
                event = event.with_data(json.dumps(document, ensure_ascii=False))
                changed = True
            out.append(event.serialise())
        return ("".join(out).encode() if changed else None), removed
    document = _loads(text)
    if document is None or not _filter_document(document, hidden, removed):
        return None, removed
    return json.dumps(document, ensure_ascii=False).encode(), removed


def _loads(text: str) -> Any | None:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


class SseFilter:
    """A response stream callback (mitmproxy ``flow.response.stream``) that filters each
    complete SSE event of a streamed ``tools/list`` response, passing others on as they
    are; ``inner`` (another stream callback, or None) sees what this one produces."""

    #: An event longer than this without its end is passed on unfiltered (bounded memory).
    MAX_EVENT = 1024 * 1024

    def __init__(self, hidden: Callable[[str], bool], inner: Callable[[bytes], Any] | None = None) -> None:
        self.hidden = hidden
        self.inner = inner
        self.removed: list[str] = []
        self._buffer = b""

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if chunk == b"":  # end of the body: what is left, then the inner end
            out, self._buffer = self._buffer, b""
            return self._pass(self._edit(out)) + self._pass(b"", end=True) if out else self._pass(b"", end=True)
        self._buffer += chunk
        out = b""
        while True:
            cut = _event_end(self._buffer)
            if cut is None:
                break
            event, self._buffer = self._buffer[:cut], self._buffer[cut:]
            out += self._edit(event)
        if len(self._buffer) > self.MAX_EVENT:
            out, self._buffer = out + self._buffer, b""
        return self._pass(out) if out else []

    def _edit(self, event: bytes) -> bytes:
        body, removed = filter_body(event, "text/event-stream", self.hidden)
        self.removed += removed
        return body if body is not None else event

    def _pass(self, data: bytes, end: bool = False) -> list[bytes]:
        if self.inner is None:
            return [] if end or not data else [data]
        produced = self.inner(data)
        if isinstance(produced, bytes):
            return [produced] if produced else []
        return [p for p in produced if p]


def _event_end(buffer: bytes) -> int | None:
    """The offset just after the first complete event (blank line) in ``buffer``."""
    ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r") if (i := buffer.find(sep)) >= 0]
    return min(ends) if ends else None
