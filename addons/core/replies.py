"""Answers the gateway gives agents itself: machine-readable JSON, always with the flow id."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

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
