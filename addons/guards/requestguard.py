"""Refuse requests an upstream could read differently from the policy, before any rule.

The checks themselves are in addons/guards/canonical.py (why each exists is explained there).
This addon runs them on every request, HTTP/1 and HTTP/2 alike, and answers a refused
one with a 400 JSON reply (``malformed_request``, ``method_override_refused`` or
``trailers_refused``), recorded like every other refusal. The head is checked in
``requestheaders``, before identity and policy; the body (form ``_method``) and trailers
can only be checked in ``request``, once they have arrived, which is still before the
policy decides (the policy and approvals addons run later in the same hook).
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.core.flowstate import FlowStates
from addons.core.replies import refuse
from addons.guards import chunkedtrailers
from addons.guards.canonical import Refusal, check_body, check_request_head

log = logging.getLogger("portcullis.requestguard")

TRAILERS_REFUSED = Refusal(
    "trailers_refused",
    "the request has trailer fields (headers after a chunked or HTTP/2 body); rules never "
    "see them and upstreams merge them into the headers, so they are refused",
)


class RequestGuardAddon:
    name = "portcullis_request_guard"

    def __init__(self, states: FlowStates) -> None:
        self.states = states

    def load(self, loader: object) -> None:
        chunkedtrailers.install()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        data = flow.request.data
        refusal = check_request_head(
            data.method, data.path, data.authority, data.host.encode("utf-8", "surrogateescape"),
            data.headers.fields, data.scheme,
        )
        if refusal is not None:
            self.refuse(flow, refusal)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        request = flow.request
        if request.trailers:
            self.refuse(flow, TRAILERS_REFUSED)
            return
        if request.raw_content and (content_type := request.headers.get("content-type")):
            refusal = check_body(content_type, request.raw_content)
            if refusal is not None:
                self.refuse(flow, refusal)

    def refuse(self, flow: http.HTTPFlow, refusal: Refusal) -> None:
        """Answer 400 with the refusal, and record why."""
        log.warning("refused a request from %s: %s", flow.client_conn.peername, refusal.reason)
        # In requestheaders: answered once the body has been read; the addons after this
        # one see a flow that already has its response and leave it alone.
        refuse(flow, self.states.of(flow), 400, refusal.error, refusal.reason)
