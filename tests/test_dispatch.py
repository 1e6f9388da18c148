"""addons/core/dispatch.py: one addon in mitmproxy's chain calls the members' hooks as
mitmproxy would call them as separate addons (order, errors, AddonHalt, async, names)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import exceptions
from mitmproxy.addons import proxyserver, tlsconfig
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import taddons, tflow

from addons.core.dispatch import Dispatcher


class Member:
    def __init__(self, name: str, calls: list, fail: Exception | None = None) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail

    def load(self, loader) -> None:
        loader.add_option(f"{self.name}_opt", int, 1, f"{self.name}'s option")
        self.calls.append((self.name, "load"))

    def request(self, flow) -> None:
        self.calls.append((self.name, "request"))
        if self.fail is not None:
            raise self.fail


class AsyncMember(Member):
    async def request(self, flow) -> None:
        await asyncio.sleep(0)
        self.calls.append((self.name, "request"))


class Looker:
    """Loads after the others: finds them by name during its own load, as with add()."""

    name = "looker"

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def load(self, loader) -> None:
        self.seen.append(loader.master.addons.get("a"))


def _run(*setups) -> None:
    """Each setup's addons in a context, the hook triggered: all on one event loop (mitmproxy
    logs addon errors through the loop it was started on)."""
    async def main() -> None:
        for addons, hook in setups:
            with taddons.context(*addons) as tctx:
                await tctx.master.addons.trigger_event(hook)
    asyncio.run(main())


def test_members_run_in_order_and_an_exception_is_logged_and_the_next_still_runs(caplog):
    runs = {}
    setups = []
    for wrap in (False, True):  # the same behaviour as separate addons
        calls = runs[wrap] = []
        members = [Member("a", calls), Member("b", calls, ValueError(f"boom {wrap}")), AsyncMember("c", calls),
                   Member("d", calls)]
        setups.append(([Dispatcher(members)] if wrap else members, http_layer.HttpRequestHook(tflow.tflow())))
    with caplog.at_level(logging.ERROR):
        _run(*setups)
    for wrap, calls in runs.items():
        assert [c for c in calls if c[1] == "request"] == [("a", "request"), ("b", "request"),
                                                           ("c", "request"), ("d", "request")], wrap
        assert f"Addon error: boom {wrap}" in caplog.text, wrap


def test_addon_halt_stops_the_remaining_members_and_the_rest_of_the_chain():
    calls: list = []
    after = Member("after", calls)
    _run(([Dispatcher([Member("a", calls), Member("b", calls, exceptions.AddonHalt()), Member("c", calls)]),
           after], http_layer.HttpRequestHook(tflow.tflow())))
    assert [c[0] for c in calls if c[1] == "request"] == ["a", "b"]


def test_members_are_registered_by_name_with_their_options_before_the_next_loads():
    calls: list = []
    seen: list = []
    a = Member("a", calls)
    with taddons.context(Dispatcher([a, Looker(seen), Member("b", calls)])) as tctx:
        assert tctx.master.addons.get("a") is a
        assert tctx.master.addons.get("looker") is not None
        assert "a_opt" in tctx.options and "b_opt" in tctx.options
        assert tctx.master.addons.chain[-1] is not a  # one addon in the chain stands for them
        assert a not in tctx.master.addons.chain
    assert seen == [a]
    assert calls == [("a", "load"), ("b", "load")]


def test_a_member_name_already_taken_is_refused():
    with pytest.raises(exceptions.AddonManagerError, match="already exists"), \
            taddons.context(Member("x", []), Dispatcher([Member("x", [])])):
        pass


def test_hooks_no_member_has_are_not_offered_to_mitmproxy_and_async_is_kept():
    dispatcher = Dispatcher([Member("a", []), AsyncMember("c", [])])
    assert getattr(dispatcher, "update", None) is None  # mitmproxy's update after every flow hook
    assert getattr(dispatcher, "response", None) is None
    assert asyncio.iscoroutinefunction(dispatcher.request)
    assert not asyncio.iscoroutinefunction(Dispatcher([Member("a", [])]).request)


def test_a_plain_hook_that_returns_an_awaitable_is_awaited_before_the_next_member():
    calls: list = []

    class Deferred(Member):
        def request(self, flow):
            async def later():
                await asyncio.sleep(0)
                calls.append((self.name, "request"))
            return later()

    _run(([Dispatcher([Member("a", calls), Deferred("b", calls), Member("c", calls)])],
          http_layer.HttpRequestHook(tflow.tflow())))
    assert [c[0] for c in calls if c[1] == "request"] == ["a", "b", "c"]


def test_make_addons_is_one_dispatcher_over_every_portcullis_addon_in_order(monkeypatch):
    from addons import portcullis

    monkeypatch.setenv("PORTCULLIS_RECORDER", "thread")  # no recording process for this
    (dispatcher,) = portcullis.make_addons()
    assert isinstance(dispatcher, Dispatcher)
    assert [type(a) for a in dispatcher.members] == [type(a) for a in portcullis.members()]
    # The members' configure sets mitmproxy's proxy options, so the proxy's addons come first.
    with taddons.context(proxyserver.Proxyserver(), tlsconfig.TlsConfig(), dispatcher) as tctx:
        recorder = tctx.master.addons.get("portcullis_recorder")
        assert recorder is next(a for a in dispatcher.members if type(a).__name__ == "RecorderAddon")
        assert "portcullis_db" in tctx.options
        # The recorder's response hook is reached through the dispatcher, in list order.
        names = [type(f.__self__).__name__ for f in dispatcher.hooks["response"]]
        assert names.index("MaskingAddon") < names.index("RecorderAddon")


def test_done_runs_every_members_done_and_frees_their_names_so_a_reload_can_register_them():
    calls: list = []

    class Ending(Member):
        def done(self) -> None:
            self.calls.append((self.name, "done"))

    async def main() -> None:
        with taddons.context() as tctx:
            first = Dispatcher([Ending("a", calls), Ending("b", calls)])
            tctx.master.addons.add(first)
            tctx.master.addons.remove(first)  # what a reloaded `mitmdump -s` script does
            assert tctx.master.addons.get("a") is None
            again = Dispatcher([Ending("a", calls), Ending("b", calls)])
            tctx.master.addons.add(again)
            assert tctx.master.addons.get("a") is again.members[0]
    asyncio.run(main())
    assert [c for c in calls if c[1] == "done"][:2] == [("a", "done"), ("b", "done")]
