"""Replays that cannot start or do not complete, in process (taddons with mitmproxy's
own client playback, a real loop bridge): no running gateway, recording off, an unknown
flow, a busy event loop, playback refusing the flow, a replay that ends in an error, and
the bound on remembered tickets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy.addons.clientplayback import ClientPlayback
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.core.loopbridge import LoopBridge
from addons.replay import addon as replay_module
from addons.replay.addon import ReplayAddon, ReplayError
from recordings.store import Store

ROW = {"id": "orig-1", "scheme": "http", "host": "api.example", "port": 80, "method": "POST",
       "path": "/v1/refunds", "request_headers": [["Content-Type", "application/json"]],
       "request_body": '{"amount": 5}', "identity": "billing-agent"}


def addon_with(recorder: object = None, bridge: LoopBridge | None = None) -> ReplayAddon:
    return ReplayAddon(FlowStates(), recorder or SimpleNamespace(store=None),
                       SimpleNamespace(authenticator=None), bridge or LoopBridge())


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running on another thread, as the gateway's is for the review UI."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def refused(call) -> ReplayError:
    with pytest.raises(ReplayError) as err:
        call()
    return err.value


def test_without_a_running_gateway_nothing_is_replayed() -> None:
    err = refused(lambda: addon_with().replay("orig-1", "alice", ROW))
    assert (err.status, err.code) == (503, "gateway_not_running")


def test_with_recording_off_there_is_nothing_to_replay_from(loop_thread: asyncio.AbstractEventLoop) -> None:
    bridge = LoopBridge()
    bridge.attach(loop_thread)
    err = refused(lambda: addon_with(bridge=bridge).replay("orig-1", "alice"))
    assert (err.status, err.code) == (503, "recording_off")


def test_a_flow_the_recording_does_not_have_is_unknown(tmp_path: Path, loop_thread: asyncio.AbstractEventLoop) -> None:
    bridge = LoopBridge()
    bridge.attach(loop_thread)
    store = Store(tmp_path / "rec.duckdb")
    try:
        err = refused(lambda: addon_with(SimpleNamespace(store=store), bridge).replay("no-such-flow", "alice"))
    finally:
        store.close()
    assert (err.status, err.code) == (404, "unknown_flow")
    assert "no recorded flow no-such-flow" in err.message


def test_a_loop_that_does_not_take_the_replay_in_time_is_busy(
        loop_thread: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_module, "HANDOVER_TIMEOUT_S", 0.05)
    bridge = LoopBridge()
    bridge.attach(loop_thread)
    release = threading.Event()
    loop_thread.call_soon_threadsafe(release.wait, 5)  # the loop is stuck in a long callback
    addon = addon_with(bridge=bridge)
    try:
        err = refused(lambda: addon.replay("orig-1", "alice", ROW))
    finally:
        release.set()
    assert (err.status, err.code) == (503, "gateway_busy")
    assert addon.tickets == {}  # the handover was cancelled: no replay behind the caller's back


def test_a_replay_that_ends_in_an_error_says_so() -> None:
    async def scenario() -> None:
        addon = addon_with()
        with taddons.context(ClientPlayback(), addon):
            addon.bridge.attach(asyncio.get_running_loop())
            ticket = addon.replay("orig-1", "alice", ROW)
            (flow_id,) = addon.tickets
            assert ticket.flow_id == flow_id and ticket.state == "pending"
            flow = tflow.tflow()
            flow.id, flow.is_replay = flow_id, "request"
            flow.response, flow.error = None, tflow.terr("connection refused")
            addon.states.of(flow).decision = "allowed"
            addon.error(flow)
            summary = ticket.wait(0)
            assert (summary["state"], summary["decision"], summary["error"]) == ("done", "error",
                                                                                  "connection refused")

    asyncio.run(scenario())


def test_a_flow_client_playback_refuses_fails_its_ticket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ClientPlayback, "check", lambda self, flow: "Can't replay live flow.")

    async def scenario() -> None:
        addon = addon_with()
        with taddons.context(ClientPlayback(), addon):
            addon.bridge.attach(asyncio.get_running_loop())
            ticket = addon.replay("orig-1", "alice", ROW)
            summary = ticket.wait(0)
            assert (summary["state"], summary["decision"]) == ("done", "error")
            assert summary["error"] == "mitmproxy refused to replay the flow"

    asyncio.run(scenario())


def test_only_finished_tickets_are_forgotten_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_module, "TICKETS_MAX", 1)

    async def scenario() -> None:
        addon = addon_with()
        with taddons.context(ClientPlayback(), addon):
            addon.bridge.attach(asyncio.get_running_loop())
            first = addon.replay("orig-1", "alice", ROW)
            second = addon.replay("orig-1", "alice", ROW)
            # Both still pending: none may be forgotten, whatever the bound.
            assert list(addon.tickets) == [first.flow_id, second.flow_id]
            first.fail("done for the test")
            third = addon.replay("orig-1", "alice", ROW)
            assert list(addon.tickets) == [second.flow_id, third.flow_id]
            assert addon.get(first.flow_id) is None

    asyncio.run(scenario())
