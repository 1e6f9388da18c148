"""Close agent connections that stall before a request, or idle between requests.

mitmproxy has no header or keep-alive timeout: a client that connects and sends nothing,
or half a header section, or keeps a connection open after its last response, holds
a connection (and its buffers) forever. A review of the gateway kept 1,500 such
connections open. Two limits, both mitmproxy options (``portcullis run`` flags)::

    portcullis_header_timeout  (--header-timeout, default 30 s): from connecting (or
        from a CONNECT being answered) to the complete header section of a request
    portcullis_idle_timeout    (--idle-timeout, default 60 s): from the end of the last
        response on a connection to the complete header section of the next request

A connection with a request in flight (its headers arrived and the response is not
complete: an upstream call, a hold awaiting a reviewer, a streaming body) or an open
WebSocket is never closed by these limits; the upstream timeout and the hold expiry
govern those. 0 switches a limit off. Connections are closed without an answer, as
HTTP servers do for idle keep-alive connections (there is no request to answer), and a
warning is logged. The addon tracks connections from the hooks it sees and checks the
deadlines a few times per second; closing uses the connection handler of mitmproxy's
proxyserver addon (as ``gateway.server.stop`` does); if that is not there, it logs an
error once and closes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import connection, ctx, exceptions, http

from addons.core.options import Option, register_options

log = logging.getLogger("portcullis.clienttimeouts")

DEFAULT_HEADER_TIMEOUT_S = 30.0
DEFAULT_IDLE_TIMEOUT_S = 60.0

OPTIONS = (
    Option("portcullis_header_timeout", float, DEFAULT_HEADER_TIMEOUT_S,
           "Seconds a client connection has to send a complete request header section "
           "after connecting (0: no limit).", flag="--header-timeout"),
    Option("portcullis_idle_timeout", float, DEFAULT_IDLE_TIMEOUT_S,
           "Seconds an idle keep-alive client connection stays open after a response "
           "(0: no limit).", flag="--idle-timeout"),
)


class ClientTimeoutsAddon:
    name = "portcullis_client_timeouts"

    def __init__(self) -> None:
        self.header_timeout = DEFAULT_HEADER_TIMEOUT_S
        self.idle_timeout = DEFAULT_IDLE_TIMEOUT_S
        #: client id -> (monotonic deadline, why): connections waiting for request headers
        self._deadlines: dict[str, tuple[float, str]] = {}
        #: client id -> flows (requests or WebSockets) in flight on it
        self._busy: dict[str, set[str]] = {}
        self._peers: dict[str, object] = {}
        self._task: asyncio.Task | None = None
        self._warned = False

    def load(self, loader) -> None:
        register_options(loader, OPTIONS)

    def configure(self, updated: set[str]) -> None:
        for option in ("portcullis_header_timeout", "portcullis_idle_timeout"):
            if option in updated and getattr(ctx.options, option) < 0:
                raise exceptions.OptionsError(f"{option} must be >= 0 seconds")
        self.header_timeout = ctx.options.portcullis_header_timeout
        self.idle_timeout = ctx.options.portcullis_idle_timeout

    def banner(self) -> list[str]:
        def show(value: float) -> str:
            return f"{value:g} s" if value else "none"
        return [f"client timeouts: headers {show(self.header_timeout)}, idle {show(self.idle_timeout)}"]

    def running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # --- what each connection is doing --------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        self._peers[client.id] = client.peername
        self._wait(client.id, self.header_timeout, "no complete request headers")

    def client_disconnected(self, client: connection.Client) -> None:
        self._deadlines.pop(client.id, None)
        self._busy.pop(client.id, None)
        self._peers.pop(client.id, None)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        # The tunnel's TLS handshake and first request get a fresh header timeout.
        self._wait(flow.client_conn.id, self.header_timeout, "no complete request headers")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn.id
        if client in self._peers:
            self._busy.setdefault(client, set()).add(flow.id)
            self._deadlines.pop(client, None)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:  # a WebSocket keeps the connection busy until it ends
            self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn.id
        flows = self._busy.get(client)
        if flows is None or flow.id not in flows:
            return
        flows.discard(flow.id)
        if not flows:
            self._wait(client, self.idle_timeout, "idle after its last response")

    def _wait(self, client: str, timeout: float, why: str) -> None:
        if client not in self._peers or self._busy.get(client):
            return
        if timeout:
            self._deadlines[client] = (time.monotonic() + timeout, f"{why} within {timeout:g} s")
        else:
            self._deadlines.pop(client, None)

    # --- enforcing ------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            limits = [t for t in (self.header_timeout, self.idle_timeout) if t]
            await asyncio.sleep(min([0.25, *(t / 4 for t in limits)]))
            now = time.monotonic()
            for client, (deadline, why) in list(self._deadlines.items()):
                if deadline <= now:
                    self._deadlines.pop(client, None)
                    self._close(client, why)

    def _close(self, client: str, why: str) -> None:
        connections = getattr(ctx.master.addons.get("proxyserver"), "connections", None)
        if connections is None:
            if not self._warned:
                self._warned = True
                log.error("cannot close stalled client connections on this mitmproxy")
            return
        handler = connections.get(client)
        transports = getattr(handler, "transports", {})
        task = getattr(transports.get(getattr(handler, "client", None)), "handler", None)
        if task is None:
            return
        log.warning("closed the connection from %s: %s", self._peers.get(client), why)
        task.cancel()  # looks like a client close to mitmproxy's layers
