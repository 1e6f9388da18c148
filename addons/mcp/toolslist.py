"""Remove tools from ``tools/list`` results, in a JSON or an SSE response body.

The model never sees a tool that every call of its identity would be refused: it
cannot waste turns on it, and the list does not advertise what the gateway forbids. Which
tools go is the addon's question to the policy (addons.mcp.addon); this module only
rewrites bodies. A body it cannot read is returned unchanged (the policy still refuses
each call of a hidden tool: filtering is a courtesy, the refusal is the control).

A ``tools/list`` result that streams (chunked JSON, or a JSON body large enough that
the gateway streams it, or a compressed one) is buffered whole by :class:`JsonBuffer` —
one document, up to :data:`MAX_TOOLS_LIST_BYTES` — and filtered at its end; a longer one
is replaced by a JSON-RPC error naming the limit (fail closed: the gateway cannot filter
what it cannot hold, and must not pass what it could not filter). Streamed SSE is
filtered event by event (:class:`SseFilter`), with the same bound per event.

Plain data in and out: no mitmproxy here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from addons.mcp import jsonrpc

#: The longest streamed JSON ``tools/list`` response buffered to be filtered; a longer
#: one is refused with a JSON-RPC error naming this limit (tools_list_too_large).
MAX_TOOLS_LIST_BYTES = 4 * 1024 * 1024


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
    are; ``inner`` (another stream callback, or None) sees what this one produces.

    An event longer than ``max_event`` without its end is not passed on unfiltered: with
    ``refusal`` (reason -> the bytes of a JSON-RPC error) it is replaced by that error as
    one event and the rest of it is dropped (fail closed, bounded memory); without one it
    is passed on as it is."""

    #: The default ``max_event``.
    MAX_EVENT = 1024 * 1024

    def __init__(self, hidden: Callable[[str], bool], inner: Callable[[bytes], Any] | None = None,
                 refusal: Callable[[str], bytes] | None = None, max_event: int | None = None) -> None:
        self.hidden = hidden
        self.inner = inner
        self.refusal = refusal
        self.max_event = max_event if max_event is not None else self.MAX_EVENT
        self.removed: list[str] = []
        self.refused: str | None = None
        self._buffer = b""
        self._skipping = False  # dropping the rest of an over-long event

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if chunk == b"":  # end of the body: what is left, then the inner end
            out, self._buffer = (b"" if self._skipping else self._buffer), b""
            return self._pass(self._edit(out)) + self._pass(b"", end=True) if out else self._pass(b"", end=True)
        self._buffer += chunk
        out = b""
        while True:
            cut = _event_end(self._buffer)
            if cut is None:
                break
            event, self._buffer = self._buffer[:cut], self._buffer[cut:]
            if self._skipping:  # the end of the over-long event: dropped
                self._skipping = False
                continue
            out += self._edit(event)
        if self._skipping:
            self._buffer = self._buffer[-3:]  # an event end may straddle two chunks
        elif len(self._buffer) > self.max_event:
            if self.refusal is None:
                out, self._buffer = out + self._buffer, b""
            else:
                self.refused = (f"an event of the tools/list response is longer than the {self.max_event:,} "
                                "bytes the gateway buffers to remove the tools this identity may not call "
                                "(MAX_TOOLS_LIST_BYTES)")
                out += b"event: message\ndata: " + self.refusal(self.refused) + b"\n\n"
                self._buffer, self._skipping = self._buffer[-3:], True
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


class JsonBuffer:
    """A response stream callback for a streamed JSON ``tools/list`` response (or a
    compressed SSE one: ``media``): keeps the chunks (nothing goes out before the end),
    filters the whole body at its end and passes the result to ``inner`` (another
    stream callback, or None), then ends it.

    Past ``limit`` bytes the rest of the upstream body is dropped and ``refusal(reason)``
    (the bytes of a JSON-RPC error) is sent instead; so is it when ``decode`` (the body's
    Content-Encoding undone) fails. ``refused`` says why, once it happened."""

    def __init__(self, hidden: Callable[[str], bool], refusal: Callable[[str], bytes],
                 inner: Callable[[bytes], Any] | None = None, limit: int = MAX_TOOLS_LIST_BYTES,
                 decode: Callable[[bytes], bytes] | None = None, media: str = "application/json") -> None:
        self.hidden = hidden
        self.media = media
        self.refusal = refusal
        self.inner = inner
        self.limit = limit
        self.decode = decode
        self.removed: list[str] = []
        self.refused: str | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if chunk != b"":
            if self.refused is None:
                self._size += len(chunk)
                if self._size > self.limit:
                    self._parts = []
                    self.refused = (f"the tools/list response is longer than the {self.limit:,} bytes "
                                    "the gateway buffers to remove the tools this identity may not "
                                    "call (MAX_TOOLS_LIST_BYTES)")
                else:
                    self._parts.append(chunk)
            return []
        return self._pass(self._finish()) + self._pass(b"", end=True)

    def _finish(self) -> bytes:
        if self.refused is None:
            body = b"".join(self._parts)
            self._parts = []
            try:
                body = self.decode(body) if self.decode is not None else body
            except Exception:  # noqa: BLE001 - cannot read it: cannot filter it, so refuse
                self.refused = "the tools/list response could not be decoded (Content-Encoding) to be filtered"
            else:
                filtered, self.removed = filter_body(body, self.media, self.hidden)
                return filtered if filtered is not None else body
        return self.refusal(self.refused)

    def _pass(self, data: bytes, end: bool = False) -> list[bytes]:
        if self.inner is None:
            return [] if end or not data else [data]
        produced = self.inner(data)
        if isinstance(produced, bytes):
            return [produced] if produced else []
        return [p for p in produced if p]
