"""Answers the gateway gives agents itself: machine-readable, always with the flow id.

Every refusal, rejection and expiry is rendered by the **denial shape** of its flow, so
that the agent's SDK can read it and the model sees the reason:

* ``JSON`` (default): ``{"error": code, "reason", ..., "flow_id"}`` with the given status.
* ``JsonRpcShape``: the flow is JSON-RPC (MCP over Streamable HTTP; addons.mcp): a JSON-RPC
  response per request id, ``error: {code, message, data}``, ``message`` carrying the
  reason, ``data`` the JSON body above, ``code`` from :data:`JSONRPC_CODES` (the
  implementation-defined range -32000..-32019), HTTP 200 (the MCP SDK 1.x transport
  turns any 4xx into an exception that ends the session), 202 when only notifications
  were sent. Ids in ``tool_result_ids`` (``tools/call`` requests of a rule with
  ``deny_as: tool_result``) get a tool result with ``isError: true`` instead, so the model
  sees a failed tool.
* ``ProviderShape``: known LLM API hosts (:data:`PROVIDER_HOSTS`) and rules with
  ``deny_as: provider``: ``{"error": {"type", "message", "code", "rule", "reason",
  "flow_id", ...}}`` (Anthropic's also has ``"type": "error"`` at the top), the status
  kept, so the OpenAI and Anthropic SDKs raise their status exception with a message that
  names the rule and the reason.

The shape of a flow is picked when the answer is made: an addon that knows more about
the flow registers a chooser with :func:`choose_shape` (addons.mcp does, for every flow);
without one, or when it returns None, the host decides (provider hosts) or JSON.
``refuse()`` stays the one entry point for refusals; ``reply()`` renders them. Answers
written where only the flow id is known — mitmproxy's error pages for a failed upstream
(addons.upstreams.errorpages) — ask :func:`error_shape`: JSON-RPC errors (code -32006)
for a JSON-RPC request, the gateway's JSON otherwise.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mitmproxy import http

from addons.core.flowstate import FlowState

DECISION_HEADER = "X-Portcullis-Decision"
FLOW_ID_HEADER = "X-Portcullis-Flow-Id"

#: JSON-RPC error code per gateway error (docs/mcp.md); any other refusal: -32000.
JSONRPC_CODES: dict[str, int] = {
    "blocked_by_policy": -32001,
    "rejected_by_reviewer": -32002,
    "approval_expired": -32003,
    "mcp_header_mismatch": -32004,
    "policy_error": -32005,
    "unsupported_charset": -32005,
    # the upstream failed (mitmproxy's error pages, addons.upstreams.errorpages)
    "upstream_unreachable": -32006,
    "upstream_timeout": -32006,
    "upstream_closed": -32006,
    "upstream_tls_error": -32006,
    "upstream_protocol_error": -32006,
    "upstream_error": -32006,
    "tools_list_too_large": -32007,  # a streamed tools/list the gateway could not filter
    "tools_list_unfilterable": -32007,
}
JSONRPC_GATEWAY_REFUSAL = -32000

#: Hosts of LLM APIs whose SDKs expect the provider error shape -> which provider.
PROVIDER_HOSTS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    ("*.openai.azure.com", "openai"),
    ("*.cognitiveservices.azure.com", "openai"),
    ("*.services.ai.azure.com", "openai"),
    ("api.anthropic.com", "anthropic"),
    ("api.mistral.ai", "openai"),
    ("api.groq.com", "openai"),
    ("api.deepseek.com", "openai"),
    ("api.together.xyz", "openai"),
    ("api.fireworks.ai", "openai"),
    ("api.x.ai", "openai"),
    ("openrouter.ai", "openai"),
)
_PROVIDER_PATTERNS = tuple(
    (re.compile(re.escape(glob).replace(r"\*", r"[^.]+") + r"\Z", re.IGNORECASE), provider)
    for glob, provider in PROVIDER_HOSTS)

#: The provider error ``type`` per HTTP status (the names both providers use).
_PROVIDER_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error", 409: "conflict_error",
                   413: "request_too_large", 429: "rate_limit_error"}


class DenialShape(Protocol):
    def render(self, status: int, body: dict[str, Any]) -> tuple[int, str, str]:
        """(HTTP status, body text, content type) for a gateway answer ``body``."""


class JsonShape:
    """The gateway's own JSON: the body as it is, the status as given."""

    def render(self, status: int, body: dict[str, Any]) -> tuple[int, str, str]:
        return status, json.dumps(body, ensure_ascii=False), "application/json"


JSON = JsonShape()


def denial_text(body: dict[str, Any]) -> str:
    """One sentence an SDK shows its caller: the reason, then which rule and flow."""
    reason = body.get("reason") or body.get("error") or "refused"
    where = [f"rule {body['rule']}"] if body.get("rule") else []
    where.append(f"flow {body.get('flow_id')}")
    return f"{reason} (Portcullis {body.get('error')}: {', '.join(where)})"


@dataclass(frozen=True)
class JsonRpcShape:
    """JSON-RPC responses, one per request id (``ids`` in request order; a batch when
    ``batch``); ``tool_result_ids``: ids answered as a failed tool instead."""

    ids: tuple[Any, ...]
    batch: bool = False
    tool_result_ids: tuple[Any, ...] = ()

    def render(self, status: int, body: dict[str, Any]) -> tuple[int, str, str]:
        if not self.ids:  # only notifications: the MCP answer to those is 202, no body read
            return 202, json.dumps(body, ensure_ascii=False), "application/json"
        messages = [self._message(i, body) for i in self.ids]
        document: Any = messages if self.batch else messages[0]
        return 200, json.dumps(document, ensure_ascii=False), "application/json"

    def _message(self, request_id: Any, body: dict[str, Any]) -> dict[str, Any]:
        text = denial_text(body)
        if request_id in self.tool_result_ids:
            return {"jsonrpc": "2.0", "id": request_id, "result": {
                "content": [{"type": "text", "text": text}], "isError": True,
                "resultType": "complete", "_meta": {"portcullis": body}}}
        code = JSONRPC_CODES.get(str(body.get("error")), JSONRPC_GATEWAY_REFUSAL)
        return {"jsonrpc": "2.0", "id": request_id,
                "error": {"code": code, "message": text, "data": body}}


@dataclass(frozen=True)
class ProviderShape:
    """The error shape of the OpenAI and Anthropic APIs, with our fields added."""

    provider: str = "openai"

    def render(self, status: int, body: dict[str, Any]) -> tuple[int, str, str]:
        error = {"type": _PROVIDER_TYPES.get(status, "api_error"), "message": denial_text(body),
                 "code": body.get("error"), "param": None,
                 **{k: v for k, v in body.items() if k != "error"}}
        document: dict[str, Any] = {"error": error}
        if self.provider == "anthropic":
            document = {"type": "error", **document}
        return status, json.dumps(document, ensure_ascii=False), "application/json"


def provider_of(host: str) -> str | None:
    """The provider whose API ``host`` is (for the default shape), or None."""
    return next((p for pattern, p in _PROVIDER_PATTERNS if pattern.match(host)), None)


#: flow -> chooser of its shape (addons register them; gone with the flow: a chooser
#: is called with the flow and must not hold on to it, or the entry would never die).
_choosers: weakref.WeakKeyDictionary[http.HTTPFlow, Callable[[http.HTTPFlow], DenialShape | None]] = (
    weakref.WeakKeyDictionary())


#: flow id -> flow, for answers written where only the id is known (mitmproxy's error
#: pages, addons.upstreams.errorpages); weak: gone with the flow.
_flows: weakref.WeakValueDictionary[str, http.HTTPFlow] = weakref.WeakValueDictionary()


def choose_shape(flow: http.HTTPFlow, chooser: Callable[[http.HTTPFlow], DenialShape | None]) -> None:
    """Let ``chooser(flow)`` pick the denial shape of ``flow`` when it is answered (None:
    the default for its host)."""
    _choosers[flow] = chooser
    _flows[flow.id] = flow


def shape_for(flow: http.HTTPFlow) -> DenialShape:
    chooser = _choosers.get(flow)
    chosen = chooser(flow) if chooser is not None else None
    if chosen is not None:
        return chosen
    provider = provider_of(flow.request.host)
    return ProviderShape(provider) if provider else JSON


def error_shape(flow_id: str | None) -> JsonRpcShape | None:
    """The shape of an upstream-failure answer (mitmproxy's error page) for the flow
    ``flow_id``: JSON-RPC errors for a JSON-RPC request (an MCP client reads them as the
    call's error, and its session goes on), always as errors (never ``deny_as:
    tool_result``: the tool did not fail, the server could not be reached); None: the
    gateway's JSON, as for every other flow."""
    flow = _flows.get(flow_id) if flow_id else None
    chosen = shape_for(flow) if flow is not None else None
    if not isinstance(chosen, JsonRpcShape) or not chosen.ids:
        return None  # not JSON-RPC, or only notifications: nobody reads the answer's body
    return JsonRpcShape(chosen.ids, chosen.batch)


def reply(
    flow: http.HTTPFlow,
    status: int,
    error: str,
    decision: str,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> None:
    """Answer the agent with ``{"error": error, ...fields, "flow_id": ...}`` in the flow's
    denial shape (see the module docstring).

    Setting ``flow.response`` in a request hook means mitmproxy never contacts the
    upstream for this flow.
    """
    body = {"error": error, **fields, "flow_id": flow.id}
    status, text, content_type = shape_for(flow).render(status, body)
    flow.response = http.Response.make(
        status,
        text,
        {
            "Content-Type": content_type,
            DECISION_HEADER: decision,
            FLOW_ID_HEADER: flow.id,
            "Cache-Control": "no-store",
            **(headers or {}),
        },
    )


def refuse(
    flow: http.HTTPFlow,
    state: FlowState,
    status: int,
    error: str,
    reason: str,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> None:
    """Refuse a request: answer the agent in its denial shape and record why, in one step.

    Every refusal of the gateway (a guard, the policy, a hold limit) is recorded the same
    way: decision ``blocked``, the reason, and a ``decided`` event naming the error code.
    """
    state.decision = "blocked"
    state.reason = reason
    state.emit("decided", action="block", error=error, reason=reason)
    reply(flow, status, error, "blocked", headers, reason=reason, **fields)
