"""Refuse raw TCP through CONNECT tunnels.

An agent's CONNECT is answered before anything else is known; mitmproxy then looks at
the first bytes. TLS is intercepted and HTTP inside it goes through the rules, but
bytes that are neither (SSH, a database protocol, anything custom) would be relayed to
the CONNECT target as raw TCP, unseen by any rule and unrecorded. Portcullis governs
HTTP APIs, so such tunnels are refused: the upstream connection is never opened, and a
``tunnel_refused`` event is recorded.
"""

from __future__ import annotations

import logging

from mitmproxy import tcp
from mitmproxy.proxy import server_hooks

from addons.core.flowstate import FlowStates
from addons.upstreams.errors import connection_task

log = logging.getLogger("portcullis.tunnelguard")

REFUSED = "raw TCP tunnels are not allowed through Portcullis (only HTTP and TLS)"


class TunnelGuardAddon:
    name = "portcullis_tunnelguard"

    def __init__(self, states: FlowStates) -> None:
        self.states = states
        self._refused: set[str] = set()  # server connection ids not to open

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        address = flow.server_conn.address
        log.warning("refused a raw TCP tunnel from %s to %s", flow.client_conn.peername, address)
        self.states.detached(flow.id).emit("tunnel_refused", host=address[0] if address else None,
                                           port=address[1] if address else None, reason=REFUSED)
        self._refused.add(flow.server_conn.id)
        task = connection_task(flow) if flow.server_conn.connected else None
        if task is not None:  # already open (e.g. connection_strategy=eager): cut it
            task.cancel()

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.id in self._refused:
            self._refused.discard(data.server.id)
            data.server.error = REFUSED

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        # Defence in depth: nothing is ever relayed, whichever side sent it.
        flow.messages[-1].content = b""

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self._refused.discard(flow.server_conn.id)

    tcp_error = tcp_end
