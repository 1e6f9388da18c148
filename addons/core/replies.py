"""Answers the gateway gives agents itself: machine-readable JSON, always with the flow id."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from addons.core.flowstate import FlowState

DECISION_HEADER = "X-Portcullis-Decision"
FLOW_ID_HEADER = "X-Portcullis-Flow-Id"


def reply(
    flow: http.HTTPFlow,
    status: int,
    error: str,
    decision: str,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> None:
    """Answer the agent with ``{"error": error, ...fields, "flow_id": ...}``.

    Setting ``flow.response`` in a request hook means mitmproxy never contacts the
    upstream for this flow.
    """
    body = {"error": error, **fields, "flow_id": flow.id}
    flow.response = http.Response.make(
        status,
        json.dumps(body, ensure_ascii=False),
        {
            "Content-Type": "application/json",
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
    """Refuse a request: answer the agent with JSON and record why, in one step.

    Every refusal of the gateway (a guard, the policy, a hold limit) is recorded the same
    way: decision ``blocked``, the reason, and a ``decided`` event naming the error code.
    """
    state.decision = "blocked"
    state.reason = reason
    state.emit("decided", action="block", error=error, reason=reason)
    reply(flow, status, error, "blocked", headers, reason=reason, **fields)
