"""Upstream faults become JSON answers and recorded errors, and hanging upstreams time out.

Options:
    portcullis_upstream_timeout: seconds from forwarding a request to its complete
        response (default 60; 0 disables). When it passes, the upstream connection is
        cut and the agent gets ``504 {"error": "upstream_timeout", ...}``. A response that
        streams through (SSE, NDJSON, large unmasked bodies) has it to its headers and
        then between any two chunks; one cut mid-stream ends the agent's stream there
        and is recorded with the error.

Every other upstream failure (refused, unresolvable, TLS failure, connection reset
before the response was complete, malformed response) reaches the agent as a JSON
502 with ``error`` one of ``upstream_unreachable``, ``upstream_tls_error``,
``upstream_closed`` or ``upstream_protocol_error`` (see addons.upstreams.errorpages), and the
flow's state carries the same kind in ``state.error`` with an ``upstream_error``
event, so the recorder stores the flow with its error.

This addon also makes mitmproxy connect to upstreams lazily (``connection_strategy
= lazy``) by default: with mitmproxy's default (eager), a CONNECT from the agent opens
a TCP and TLS connection to the upstream before any rule has seen a request, so
blocked requests would still touch the upstream and an unreachable upstream would
surface as a bare CONNECT failure instead of a JSON answer.

The timeout finds what a flow is waiting for: the task still opening its upstream
connection (mitmproxy assigns ``flow.server_conn`` only once that connection is open,
so connects are tracked per client connection and address), or the task reading the
open connection. A flow waiting for one of mitmproxy's five connection slots per
address and client connection cannot be cut where it waits (cancelling it there would
leave the flow without an answer); it is looked at again every 20 ms and cut as soon as
it holds a slot, which frees when an earlier connection's own (earlier) deadline cuts it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mitmproxy import connection, ctx, exceptions, http, tcp
from mitmproxy.proxy import server_hooks

from addons.core.flowstate import FlowStates
from addons.core.options import Option, register_options
from addons.upstreams import errorpages

log = logging.getLogger("portcullis.upstream_errors")

DEFAULT_TIMEOUT_S = 60.0
#: How often a timed-out flow that waits for a connection slot is looked at again.
SLOT_POLL_S = 0.02
#: The error mitmproxy gives the flows waiting on a connect whose task was cancelled.
CANCELLED_CONNECT = "connection cancelled"


@dataclass(frozen=True)
class Connecting:
    """An upstream connection being opened, and by which task."""

    client_id: str
    server: connection.Server
    task: asyncio.Task

    @property
    def waiting_for_slot(self) -> bool:
        # mitmproxy stamps the connection when it starts the TCP connect, after it got
        # one of its per-address slots; cancelling before that would lose the flow.
        return self.server.timestamp_start is None


OPTIONS = (
    Option("portcullis_upstream_timeout", float, DEFAULT_TIMEOUT_S,
           "Seconds an upstream has to deliver a complete response; for one that streams, to its headers and between chunks (0: no limit).",
           flag="--upstream-timeout"),
)


class UpstreamErrorsAddon:
    name = "portcullis_upstream_errors"

    def __init__(self, states: FlowStates) -> None:
        self.states = states
        self.timeout: float = DEFAULT_TIMEOUT_S
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._timed_out: set[str] = set()
        #: flows past their deadline still waiting for a connection slot (logged once)
        self._slot_waiters: set[str] = set()
        #: flow id -> when it was first found past its deadline with nothing to cut yet
        self._overdue: dict[str, float] = {}
        #: server connection id -> the connect in progress (a connect can hang too)
        self._connecting: dict[str, Connecting] = {}
        #: client connection id -> connects cut for a timeout whose flow is not known yet
        self._cut_connects: dict[str, int] = {}

    def load(self, loader) -> None:
        register_options(loader, OPTIONS)
        errorpages.install()
        # A default, not a mandate: `--set connection_strategy=eager` still wins.
        loader.master.options.update(connection_strategy="lazy")

    def configure(self, updated: set[str]) -> None:
        if "portcullis_upstream_timeout" in updated:
            value = ctx.options.portcullis_upstream_timeout
            if value < 0:
                raise exceptions.OptionsError("portcullis_upstream_timeout must be >= 0 seconds")
            self.timeout = value

    def banner(self) -> list[str]:
        limit = f"{self.timeout:g} s" if self.timeout else "none"
        return [f"upstream timeout: {limit}"]

    # --- hooks ---------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        # Runs after the policy and approvals: only flows about to be forwarded are timed.
        if flow.response is not None or flow.error is not None or not self.timeout:
            return
        self._arm(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed response (masking lets it through as it arrives) lasts as long as the
        # upstream keeps sending: from its headers on, the timeout is the longest silence
        # between two chunks, not the whole body, so a model generating for minutes is
        # not cut while one that stops sending still is. Runs after masking chose to stream.
        if flow.response is None or not flow.response.stream or flow.id not in self._timers:
            return
        inner = flow.response.stream

        def timed(chunk: bytes):
            self._arm(flow)
            return inner(chunk) if callable(inner) else chunk

        self._arm(flow)
        flow.response.stream = timed

    def response(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        assert flow.error is not None
        message = flow.error.msg
        claimed = self._claims_cut_connect(flow, message)  # counted even for its own cut
        if flow.id in self._timed_out or claimed:
            self._timed_out.discard(flow.id)
            kind = "upstream_timeout"
        elif message == flow.error.KILLED_MESSAGE:
            kind = "killed"
        elif "client disconnected" in message.lower():
            kind = "client_disconnected"
        elif flow.request.timestamp_end is None:
            kind = "bad_request"  # the request itself never arrived complete and valid
        else:
            kind = errorpages.classify(502, message)[1]
        state = self.states.of(flow)
        state.error = kind
        state.emit("upstream_error", error=kind, detail=message)
        # Tell the error page written next for this flow which flow it is for.
        errorpages.expect_page(flow.client_conn.id, flow.request.http_version, message, flow.id, kind)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connecting[data.server.id] = Connecting(data.client.id, data.server, task)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._connecting.pop(data.server.id, None)

    server_connect_error = server_connected

    def client_disconnected(self, client: connection.Client) -> None:
        errorpages.forget_client(client.id)
        self._cut_connects.pop(client.id, None)

    def done(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # --- the timeout ---------------------------------------------------------------

    def _arm(self, flow: http.HTTPFlow) -> None:
        """(Re)start the flow's timer: ``timeout`` seconds from now."""
        earlier = self._timers.pop(flow.id, None)
        if earlier is not None:
            earlier.cancel()
        self._timers[flow.id] = asyncio.get_running_loop().call_later(self.timeout, self._expire, flow)

    def _cancel(self, flow: http.HTTPFlow) -> None:
        self._slot_waiters.discard(flow.id)
        self._overdue.pop(flow.id, None)
        timer = self._timers.pop(flow.id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, flow: http.HTTPFlow) -> None:
        self._timers.pop(flow.id, None)
        if flow.error is not None or (flow.response is not None and flow.response.timestamp_end is not None):
            return  # failed already, or answered in full (a streamed response is still open)
        address = (flow.request.host, flow.request.port)
        task = None
        if flow.server_conn.connected and flow.server_conn.address == address:
            task = connection_task(flow)  # sent: waiting for the response
        else:
            connecting = self._connects_of(flow)
            if any(c.waiting_for_slot for c in connecting):
                # Its connect (or, unassigned yet, one it may be) waits for a slot. It
                # cannot be cancelled there (mitmproxy would never answer the flow), but
                # the slot frees as soon as an earlier connection is cut, and their
                # deadlines came first: look again shortly, and cut it the moment it
                # holds a slot, so the answer comes at the deadline, not a timeout later.
                if flow.id not in self._slot_waiters:
                    self._slot_waiters.add(flow.id)
                    log.warning("flow %s to %s is still waiting for a free upstream connection slot",
                                flow.id, flow.request.host)
                self._timers[flow.id] = asyncio.get_running_loop().call_later(
                    SLOT_POLL_S, self._expire, flow)
                return
            if connecting:
                self._connecting.pop(connecting[0].server.id, None)
                task = connecting[0].task
                if connecting[0].server is not flow.server_conn:
                    # Not known to be this flow's connect (mitmproxy has not assigned it
                    # yet): the earliest on its client and address, whose flow came first
                    # and is past its deadline too. Whichever flow fails with it timed out;
                    # this one is looked at again until its own answer is out.
                    self._cut_connects[flow.client_conn.id] = self._cut_connects.get(flow.client_conn.id, 0) + 1
                    self._timers[flow.id] = asyncio.get_running_loop().call_later(
                        SLOT_POLL_S, self._expire, flow)
        if task is None:
            # Between its TCP connect and its TLS handshake's end, a connection is neither
            # a connect in progress nor the flow's own yet (mitmproxy assigns it once TLS
            # is up): look again shortly, for as long as one more timeout.
            loop = asyncio.get_running_loop()
            first = self._overdue.setdefault(flow.id, loop.time())
            if loop.time() - first < self.timeout:
                self._timers[flow.id] = loop.call_later(SLOT_POLL_S, self._expire, flow)
                return
            log.error("cannot cut the upstream connection of flow %s", flow.id)
            return
        log.warning("upstream %s did not answer %s %s within %g s",
                    flow.request.host, flow.request.method, flow.request.pretty_url, self.timeout)
        self._timed_out.add(flow.id)
        # Cancelling the task that reads from (or is still connecting to) the upstream
        # looks like a peer close to the protocol layers, so mitmproxy fails the flow
        # through its normal error path (error hook, then the error answer).
        task.cancel()

    def _claims_cut_connect(self, flow: http.HTTPFlow, message: str) -> bool:
        """Whether the flow failed with a connect cut for another flow's timeout."""
        client = flow.client_conn.id
        if message != CANCELLED_CONNECT or not self._cut_connects.get(client):
            return False
        self._cut_connects[client] -= 1
        return True

    def _connects_of(self, flow: http.HTTPFlow) -> list[Connecting]:
        """The connects in progress the flow may wait for: its own if known, else (not
        yet assigned to it by mitmproxy) those on its client connection to its address."""
        exact = self._connecting.get(flow.server_conn.id)
        if exact is not None:
            return [exact]
        address = (flow.request.host, flow.request.port)
        return [c for c in self._connecting.values()
                if c.client_id == flow.client_conn.id and c.server.address == address]


def connection_task(flow: http.HTTPFlow | tcp.TCPFlow) -> asyncio.Task | None:
    """The task that reads the flow's upstream connection, if it is open."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(flow.client_conn.id)
    transport = getattr(handler, "transports", {}).get(flow.server_conn) if handler else None
    return getattr(transport, "handler", None)
