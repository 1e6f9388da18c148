"""WebSocket connections: what the rules can and cannot see, made explicit.

The upgrade request (``GET`` with ``Upgrade: websocket``) is an ordinary request: the
identity, the rules, holds and the recorder all see it, and a block answers it with a
JSON 403 before any connection to the upstream exists. What follows the ``101`` is
a stream of messages that rules do not evaluate and masks do not rewrite. So:

* A WebSocket upgrade matched by a rule with ``mask``/``mask_request`` is refused
  (``403 websocket_not_maskable``): masked data must not leave through a channel the
  masks cannot reach.
* Message contents are not recorded. The recorder gets events: ``websocket_opened``,
  and ``websocket_closed`` with message counts and byte totals per direction and the
  close code.
* mitmproxy keeps every message of a connection in memory; only the last
  KEEP_MESSAGES are kept, so a long-lived socket cannot grow the gateway without bound.
"""

from __future__ import annotations

from mitmproxy import http

from addons.core.flowstate import FlowStates, WebSocketTally
from addons.core.replies import refuse

KEEP_MESSAGES = 100
MASK_KEYS = ("mask", "mask_request")


def is_websocket_upgrade(request: http.Request) -> bool:
    return (request.headers.get("upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("connection", "").lower())


class WebSocketGuardAddon:
    name = "portcullis_wsguard"

    def __init__(self, states: FlowStates) -> None:
        self.states = states

    def request(self, flow: http.HTTPFlow) -> None:
        # Runs right after the policy: only flows it let through (or holds) get here.
        if flow.response is not None or flow.error is not None:
            return
        if not is_websocket_upgrade(flow.request):
            return
        state = self.states.of(flow)
        matched = state.verdict.matched if state.verdict is not None else ()
        masked = [r.name for r in matched if any(k in r.extensions for k in MASK_KEYS)]
        if not masked:
            return
        refuse(flow, state, 403, "websocket_not_maskable",
               f"WebSocket messages cannot be masked (rules: {', '.join(masked)})", rules=masked)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        state = self.states.of(flow)
        state.websocket = WebSocketTally()
        state.emit("websocket_opened")

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        state = self.states.of(flow)
        tally = state.websocket = state.websocket or WebSocketTally()
        side = tally.client if message.from_client else tally.server
        side[0] += 1
        side[1] += len(message.content)
        if len(flow.websocket.messages) > KEEP_MESSAGES:
            del flow.websocket.messages[:-KEEP_MESSAGES]

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        state = self.states.of(flow)
        tally = state.websocket or WebSocketTally()
        state.emit(
            "websocket_closed",
            messages_from_client=tally.client[0], bytes_from_client=tally.client[1],
            messages_from_server=tally.server[0], bytes_from_server=tally.server[1],
            close_code=flow.websocket.close_code, closed_by_client=flow.websocket.closed_by_client,
        )
