"""Adapts MCP (JSON-RPC over Streamable HTTP) flows; see addons.mcp and docs/mcp.md.

Before the policy (``McpAddon``, for every flow):

* picks each flow's denial shape (addons.core.replies.choose_shape): JSON-RPC errors for
  JSON-RPC requests, or what the deciding rule's ``deny_as`` asks for;
* refuses a request whose mirrored headers (``Mcp-Method``, ``Mcp-Name``, revision
  2026-07-28) disagree with its body: the rules judge the body, a server may route by the
  header, so the two must say the same (``mcp_header_mismatch``).

After the policy (``McpAddon.batches``): a batch is judged element by element too, and the
strongest verdict stands (see addons.mcp.rules for why).

On responses: ``tools/list`` results lose the tools this identity could never call (every
call would be blocked, by rules without ``list: show``); the session's tool calls are
remembered (bounded) so that a reviewer sees what came before a held call.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import http
from mitmproxy.net import encoding as codecs

from addons.core.flowstate import FlowState, FlowStates
from addons.core.jsonbody import body_content
from addons.core.replies import (
    JSON,
    DenialShape,
    JsonRpcShape,
    ProviderShape,
    choose_shape,
    provider_of,
    refuse,
)
from addons.core.secretforms import REDACTED
from addons.mcp import jsonrpc, toolslist
from addons.mcp.rules import ListProbe, focused
from addons.mcp.toolslist import SseFilter
from addons.policy.conditions import RequestView
from addons.policy.engine import STRENGTH, Verdict

log = logging.getLogger("portcullis.mcp")

#: Tool calls remembered per session, and sessions remembered (oldest dropped first).
CALLS_PER_SESSION = 20
SESSIONS_MAX = 1000
SESSION_HEADER = "mcp-session-id"
#: A batch with more messages than this is refused: each is judged alone (bounded work).
MAX_BATCH = 100
TOOLS_HIDDEN_HEADER = "X-Portcullis-Tools-Hidden"


@dataclass(frozen=True)
class McpCall:
    """What the gateway read of one JSON-RPC request body."""

    document: Any
    ids: tuple[Any, ...]
    batch: bool
    messages: tuple[jsonrpc.Message, ...]  # () when the body cannot be judged

    @property
    def single(self) -> jsonrpc.Message | None:
        return self.messages[0] if len(self.messages) == 1 and not self.batch else None


def read_call(flow: http.HTTPFlow) -> McpCall | None:
    """The flow's JSON-RPC request, or None when its body is not JSON-RPC."""
    if flow.request.method.upper() != "POST":
        return None
    try:
        content = body_content(flow.request)
    except Exception:  # noqa: BLE001 - an unreadable body is the policy's to refuse
        return None
    if b"jsonrpc" not in content.lower():  # cheap: most bodies are not JSON-RPC
        return None
    document = jsonrpc.parse(content)
    if not jsonrpc.is_jsonrpc(document):
        return None
    try:
        found = tuple(jsonrpc.messages(document) or ())
    except jsonrpc.NotJsonRpc:
        found = ()
    return McpCall(document, jsonrpc.request_ids(document), isinstance(document, list), found)


def header_mismatch(headers: Any, call: McpCall) -> str | None:
    """Why the mirrored Mcp-Method / Mcp-Name headers disagree with the body, or None."""
    methods = headers.get_all(jsonrpc.METHOD_HEADER)
    names = headers.get_all(jsonrpc.NAME_HEADER)
    if not methods and not names:
        return None
    if len(methods) > 1 or len(names) > 1:
        return "the Mcp-Method or Mcp-Name header is given more than once"
    if call.batch or not call.messages:
        return "Mcp-Method/Mcp-Name headers name one call, the body is a batch or not one call"
    message = call.messages[0]
    if methods and methods[0].strip() != message.method:
        return f"the Mcp-Method header says {methods[0].strip()[:100]!r}, the body calls {message.method[:100]!r}"
    if names:
        target = message.target
        if not isinstance(target, str) or names[0].strip() != target:
            return (f"the Mcp-Name header says {names[0].strip()[:100]!r}, the body names "
                    f"{str(target)[:100]!r}")
    return None


def session_key(flow: http.HTTPFlow, state: FlowState) -> str:
    session = flow.request.headers.get(SESSION_HEADER)
    base = f"{state.identity}@{flow.request.host}:{flow.request.port}{flow.request.path.split('?')[0]}"
    return f"{base}#{session[:200]}" if session else base


class McpAddon:
    name = "portcullis_mcp"

    def __init__(self, states: FlowStates, policy: Any) -> None:
        """``policy``: the policy addon (its ``policy`` in force, its ``apply``)."""
        self.states = states
        self.policy_addon = policy
        self._calls: weakref.WeakKeyDictionary[http.HTTPFlow, McpCall] = weakref.WeakKeyDictionary()
        self._sessions: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self.batches = BatchVerdicts(self)
        self.streams = ToolsListStreams(self)

    # --- what other addons ask -------------------------------------------------------

    def call_of(self, flow: http.HTTPFlow) -> McpCall | None:
        return self._calls.get(flow)

    def earlier_calls(self, flow: http.HTTPFlow, state: FlowState) -> list[dict[str, Any]]:
        return list(self._sessions.get(session_key(flow, state), ()))

    def describe(self, flow: http.HTTPFlow, state: FlowState) -> dict[str, Any] | None:
        """What a reviewer is shown of an MCP call: server, tool, arguments, the session's
        earlier tool calls; None for other flows."""
        call = self._calls.get(flow)
        message = call.single if call is not None else None
        if message is None:
            return None
        arguments = message.arguments
        return {
            "server": flow.request.pretty_url,
            "method": message.method,
            "tool": message.target if isinstance(message.target, str) else None,
            "arguments": _scrub(json.dumps(arguments, indent=2, ensure_ascii=False, sort_keys=True),
                                state.secrets) if arguments is not None else None,
            "session": flow.request.headers.get(SESSION_HEADER),
            "earlier": self.earlier_calls(flow, state),
        }

    # --- hooks -------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        state = self.states.of(flow)
        choose_shape(flow, self._shape)
        call = read_call(flow)
        if call is None:
            return
        self._calls[flow] = call
        if call.batch and len(call.document) > MAX_BATCH:
            refuse(flow, state, 413, "mcp_batch_too_large",
                   f"a JSON-RPC batch may have at most {MAX_BATCH} messages (this one has "
                   f"{len(call.document)}); send fewer at once", limit=MAX_BATCH)
            return
        mismatch = header_mismatch(flow.request.headers, call)
        if mismatch is not None:
            refuse(flow, state, 400, "mcp_header_mismatch",
                   f"{mismatch}; the gateway judges the body, so the headers must mirror it")

    def _shape(self, flow: http.HTTPFlow) -> DenialShape | None:
        state = self.states.of(flow)
        rule = state.verdict.rule if state.verdict is not None else None
        option = rule.extensions.get("deny_as") if rule is not None else None
        if option == "json":
            return JSON
        call = self._calls.get(flow)
        if call is not None and option != "provider":
            tool_ids: tuple[Any, ...] = ()
            if option == "tool_result":
                tool_ids = tuple(m.id for m in call.messages if m.has_id and m.method == "tools/call")
            return JsonRpcShape(call.ids, call.batch, tool_ids)
        if option == "provider":
            return ProviderShape(provider_of(flow.request.host) or "openai")
        return None

    def response(self, flow: http.HTTPFlow) -> None:
        call = self._calls.get(flow)
        if call is None or flow.response is None:
            return
        state = self.states.of(flow)
        self._remember(flow, state, call)
        if state.forwarded and self._lists_tools(flow) and not flow.response.stream \
                and flow.response.content:
            self._filter_tools(flow, state)

    def _lists_tools(self, flow: http.HTTPFlow) -> bool:
        call = self._calls.get(flow)
        return call is not None and any(m.method == "tools/list" for m in call.messages)

    def _remember(self, flow: http.HTTPFlow, state: FlowState, call: McpCall) -> None:
        calls = [m for m in call.messages if m.method == "tools/call" and isinstance(m.name, str)]
        if not calls:
            return
        key = session_key(flow, state)
        seen = self._sessions.pop(key, None) or deque(maxlen=CALLS_PER_SESSION)
        self._sessions[key] = seen
        while len(self._sessions) > SESSIONS_MAX:
            self._sessions.popitem(last=False)
        for message in calls:
            seen.append({"flow_id": flow.id, "at": time.time(), "tool": message.name,
                         "arguments": _scrub(jsonrpc.canonical(message.arguments), state.secrets)[:500],
                         "decision": state.decision})

    def hidden_tools(self, flow: http.HTTPFlow, state: FlowState) -> Callable[[str], bool] | None:
        """tool name -> hide it from this flow's tools/list result? (None: no rules)"""
        policy = self.policy_addon.policy
        if policy is None:
            return None
        cache: dict[str, bool] = {}

        def hidden(name: str) -> bool:
            if name not in cache:
                cache[name] = always_blocked(policy, flow, state, name)
            return cache[name]

        return hidden

    def _filter_tools(self, flow: http.HTTPFlow, state: FlowState) -> None:
        hidden = self.hidden_tools(flow, state)
        if hidden is None:
            return
        assert flow.response is not None
        try:
            body, removed = toolslist.filter_body(
                flow.response.content or b"", flow.response.headers.get("content-type", ""), hidden)
        except Exception:  # noqa: BLE001 - filtering is a courtesy; each call is still judged
            log.exception("tools/list filtering failed for %s", flow.request.pretty_url)
            return
        if body is not None:
            flow.response.content = body
            flow.response.headers[TOOLS_HIDDEN_HEADER] = str(len(removed))
            log.info("hid %d tools from %s for %s: %s", len(removed), flow.request.pretty_url,
                     state.identity, ", ".join(removed)[:500])


def _scrub(text: str, secrets: set[str]) -> str:
    """Values the gateway injected never reach a reviewer (as in the shown body)."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def always_blocked(policy: Any, flow: http.HTTPFlow, state: FlowState, tool: str) -> bool:
    """Would every call of ``tool`` (whatever its arguments) from this identity to this
    server be blocked? Judged on a synthetic ``tools/call`` with conditions on arguments
    counted once as holding and once as not: hidden only if blocked both ways."""
    probe = flow.copy()
    probe.response = None
    probe.request.method = "POST"
    probe.request.headers["content-type"] = "application/json"
    probe.request.headers.pop("content-encoding", None)
    probe.request.content = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "tools/call",
                                        "params": {"name": tool, "arguments": {}}}).encode()
    for assume in (False, True):
        with focused(probe, ListProbe(assume)):
            try:
                verdict = policy.evaluate(RequestView(probe, state.identity, state.groups))
            except Exception:  # noqa: BLE001 - cannot tell: keep the tool listed
                return False
        if verdict.action != "block":
            return False
    return True


class BatchVerdicts:
    """After the policy: each element of a batch judged alone; the strongest verdict wins."""

    name = "portcullis_mcp_batches"

    def __init__(self, mcp: McpAddon) -> None:
        self.mcp = mcp

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        call = self.mcp.call_of(flow)
        state = self.mcp.states.of(flow)
        policy = self.mcp.policy_addon.policy
        if call is None or not call.batch or state.verdict is None or policy is None:
            return
        strongest: Verdict = state.verdict
        view = RequestView(flow, state.identity, state.groups)  # the body is read once
        for i in range(len(call.messages)):
            with focused(flow, i):
                try:
                    verdict = policy.evaluate(view)
                except Exception as exc:  # noqa: BLE001 - whole-batch evaluation succeeded; be safe
                    refuse(flow, state, 403, "policy_error", f"batch element {i}: {exc}")
                    return
            if STRENGTH[verdict.action] > STRENGTH[strongest.action]:
                strongest = verdict
        if strongest is not state.verdict:
            self.mcp.policy_addon.apply(flow, strongest)


class ToolsListStreams:
    """After masking (which decides what streams): a streamed ``tools/list`` result is
    filtered before the capture the recorder stores — SSE event by event, JSON (chunked,
    or large enough to stream) buffered whole up to ``toolslist.MAX_TOOLS_LIST_BYTES``,
    a longer one refused with a JSON-RPC error naming the limit."""

    name = "portcullis_mcp_streams"

    def __init__(self, mcp: McpAddon) -> None:
        self.mcp = mcp

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or not response.stream or not self.mcp._lists_tools(flow):
            return
        state = self.mcp.states.of(flow)
        if not state.forwarded:
            return
        hidden = self.mcp.hidden_tools(flow, state)
        if hidden is None:
            return
        stream = response.stream
        inner = stream.inner if hasattr(stream, "inner") else stream if callable(stream) else None
        sse = "text/event-stream" in response.headers.get("content-type", "").lower()
        encoded = response.headers.get("content-encoding", "").strip().lower() not in ("", "identity")
        if sse and not encoded:
            wrapped: Callable[[bytes], Any] = SseFilter(hidden, inner, self._refusal(flow, state),
                                                        toolslist.MAX_TOOLS_LIST_BYTES)
        else:  # JSON, or compressed SSE: buffered whole, decoded, filtered, sent plain
            wrapped = self._buffer(flow, state, hidden, inner, "text/event-stream" if sse else "application/json")
        if hasattr(stream, "inner"):  # the masking addon's capture: filter before it keeps a copy
            stream.inner = wrapped
        else:
            response.stream = wrapped
        if response.headers.pop("content-length", None) is not None and flow.request.http_version == "HTTP/1.1":
            response.headers["transfer-encoding"] = "chunked"

    def _buffer(self, flow: http.HTTPFlow, state: FlowState, hidden: Callable[[str], bool],
                inner: Callable[[bytes], Any] | None, media: str) -> toolslist.JsonBuffer:
        assert flow.response is not None
        encoding = flow.response.headers.pop("content-encoding", "").strip().lower()
        decode = (lambda data: encoding_decode(data, encoding)) if encoding not in ("", "identity") else None
        return toolslist.JsonBuffer(hidden, self._refusal(flow, state), inner,
                                    limit=toolslist.MAX_TOOLS_LIST_BYTES, decode=decode, media=media)

    def _refusal(self, flow: http.HTTPFlow, state: FlowState) -> Callable[[str], bytes]:
        call = self.mcp.call_of(flow)
        assert call is not None

        def refusal(reason: str) -> bytes:
            """The JSON-RPC error that replaces a tools/list result the gateway cannot filter
            (the denial shape of replies, for the request's ids); recorded as a refusal."""
            limit = toolslist.MAX_TOOLS_LIST_BYTES
            body = {"error": "tools_list_too_large" if "longer than" in reason else "tools_list_unfilterable",
                    "reason": reason, "limit": limit, "flow_id": flow.id}
            state.decision, state.reason = "blocked", reason
            state.emit("decided", action="block", error=body["error"], reason=reason)
            log.warning("refused the tools/list response of %s for %s: %s", flow.request.pretty_url,
                        state.identity, reason)
            return JsonRpcShape(call.ids, call.batch).render(502, body)[1].encode()

        return refusal


def encoding_decode(data: bytes, encoding: str) -> bytes:
    """Undo a Content-Encoding (gzip, deflate, br, zstd) as mitmproxy does."""
    decoded = codecs.decode(data, encoding)
    assert isinstance(decoded, bytes)
    return decoded
