"""The upstream timeout, in process: which connect a timed-out flow's deadline cuts, and
which flow is then told it timed out.

An HTTP/2 agent's streams to one HTTP/1 address each open their own connection, and
mitmproxy assigns a connection to its flow only once it is open: while several connects
of one client to one address are in progress, a deadline cannot tell which is its own.
It cuts the earliest, and whichever flow fails with that cut is the one that timed out
(a CI run under load once answered that flow ``502 upstream_protocol_error`` and the
flow whose deadline it was ``504`` a second timeout later). The end-to-end case is in
tests/test_upstream_hangs.py.
"""

from __future__ import annotations

import asyncio

from mitmproxy import connection
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.upstreams.errors import CANCELLED_CONNECT, Connecting, UpstreamErrorsAddon

ADDRESS = ("api.test", 443)


def _stream(client: connection.Client):
    flow = tflow.tflow()
    flow.client_conn = client
    flow.request.host, flow.request.port = ADDRESS
    flow.server_conn = connection.Server(address=ADDRESS)  # not assigned: mitmproxy's placeholder
    return flow


def _connect(addon: UpstreamErrorsAddon, client: connection.Client) -> Connecting:
    server = connection.Server(address=ADDRESS)
    server.timestamp_start = 1.0  # holds a slot: the TCP connect has started
    task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    connecting = Connecting(client.id, server, task)
    addon._connecting[server.id] = connecting
    return connecting


def _fail(addon: UpstreamErrorsAddon, flow, message: str) -> None:
    flow.error = Error(message)
    addon.error(flow)


def _run(scenario) -> None:
    """Run ``scenario(addon, states)`` on an event loop, with a 2 s timeout configured."""
    async def main():
        states = FlowStates()
        addon = UpstreamErrorsAddon(states)
        with taddons.context():
            addon.timeout = 2.0
            await scenario(addon, states)

    asyncio.run(main())


async def _settle() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_a_deadline_cuts_the_earliest_connect_and_the_flow_that_fails_with_it_timed_out():
    async def scenario(addon, states):
        client = tflow.tclient_conn()
        first, second = _stream(client), _stream(client)
        first_connect, second_connect = _connect(addon, client), _connect(addon, client)

        addon._expire(second)  # the later flow's deadline comes first to look
        await _settle()
        assert first_connect.task.cancelled() and not second_connect.task.done()
        assert second.id in addon._timers  # looked at again: its own answer is not out

        _fail(addon, first, CANCELLED_CONNECT)  # mitmproxy fails the cut connect's flow
        assert states.of(first).error == "upstream_timeout"

        addon._expire(second)
        await _settle()
        assert second_connect.task.cancelled()
        _fail(addon, second, CANCELLED_CONNECT)
        assert states.of(second).error == "upstream_timeout"
        assert second.id not in addon._timers and not addon._cut_connects.get(client.id)

    _run(scenario)


def test_a_cancelled_connect_nobody_cut_is_not_called_a_timeout():
    async def scenario(addon, states):
        flow = _stream(tflow.tclient_conn())
        flow.request.timestamp_end = 1.0
        _fail(addon, flow, CANCELLED_CONNECT)  # e.g. the gateway shutting down
        assert states.of(flow).error == "upstream_protocol_error"

    _run(scenario)


def test_a_flow_cut_by_its_own_deadline_uses_up_the_cut():
    async def scenario(addon, states):
        client = tflow.tclient_conn()
        only = _stream(client)
        own = _connect(addon, client)
        addon._expire(only)
        await _settle()
        assert own.task.cancelled()
        _fail(addon, only, CANCELLED_CONNECT)
        assert states.of(only).error == "upstream_timeout"
        later = _stream(client)  # a later cancelled connect is no longer counted as cut
        later.request.timestamp_end = 1.0
        _fail(addon, later, CANCELLED_CONNECT)
        assert states.of(later).error == "upstream_protocol_error"

    _run(scenario)


def test_a_flow_whose_connection_is_between_connect_and_tls_is_looked_at_again(caplog):
    # Its TCP connect is done (no connect in progress) but mitmproxy has not assigned the
    # connection yet (TLS still going): nothing to cut now, so it looks again rather than
    # give up (a CI run answered such a stream 502 eight seconds late), for one timeout.
    async def scenario(addon, states):
        addon.timeout = 0.1
        flow = _stream(tflow.tclient_conn())
        addon._expire(flow)
        assert flow.id in addon._timers
        assert "cannot cut" not in caplog.text
        await asyncio.sleep(0.3)  # past one more timeout with still nothing to cut
        assert flow.id not in addon._timers
        assert caplog.text.count("cannot cut") == 1

    _run(scenario)
