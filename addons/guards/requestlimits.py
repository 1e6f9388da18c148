"""Refuse requests whose header section is unreasonably large.

mitmproxy parses any header section it is sent; a policy gateway should not hand a
multi-megabyte header block to its rules, its recorder and the upstream. Limits are
generous compared with common servers (nginx allows 32 KiB, Node.js 16 KiB).
"""

from __future__ import annotations

from mitmproxy import http

from addons.core.flowstate import FlowStates
from addons.core.replies import refuse

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_COUNT = 256


class RequestLimitsAddon:
    name = "portcullis_request_limits"

    def __init__(self, states: FlowStates) -> None:
        self.states = states

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        fields = flow.request.headers.fields
        size = sum(len(name) + len(value) + 4 for name, value in fields)
        if size <= MAX_HEADER_BYTES and len(fields) <= MAX_HEADER_COUNT:
            return
        reason = (f"{len(fields)} headers, {size} bytes: the limits are "
                  f"{MAX_HEADER_COUNT} headers and {MAX_HEADER_BYTES} bytes")
        # Set now, answered once the body has been read: the policy and the other
        # addons see a flow that already has its response and leave it alone.
        refuse(flow, self.states.of(flow), 431, "headers_too_large", reason)
