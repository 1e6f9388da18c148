"""gateway/server.py's stop waits for mitmproxy's running hook tasks before it cuts the
connections: a flow answered just before a stop still gets its last hooks (the recorder's
among them), and a hook that never ends (a held request) delays the stop only so long."""

from __future__ import annotations

import asyncio

from gateway.server import _running_hooks_done


def test_a_stop_waits_for_running_hooks_and_no_longer_than_its_limit():
    async def main():
        finished = []

        async def hook(delay: float) -> None:
            await asyncio.sleep(delay)
            finished.append(delay)

        asyncio.get_running_loop().create_task(hook(0.05), name="handle_hook(error)")
        await _running_hooks_done(limit=5)
        assert finished == [0.05]  # the recorder's error hook would have run

        held = asyncio.get_running_loop().create_task(hook(60), name="handle_hook(request)")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await _running_hooks_done(limit=0.1)
        assert not held.done()  # cut later by the stop, not awaited
        assert loop.time() - started < 5  # it returned at its limit, not at the hook's end
        held.cancel()

    asyncio.run(main())


def test_only_request_hooks_are_cut_early_and_chained_hooks_are_waited_for():
    """mitmproxy answers an unparseable request (CL+TE) before its requestheaders and error
    hooks run, one after the other: the stop waits for both, past the request hooks' limit;
    a held request hook is left after its own, shorter limit."""
    async def main():
        loop = asyncio.get_running_loop()
        finished = []

        async def hook(name: str, delay: float, then: str | None = None) -> None:
            await asyncio.sleep(delay)
            if then:  # the next hook's task is created before this one ends, as mitmproxy does
                loop.create_task(hook(then, delay), name=f"handle_hook({then})")
            finished.append(name)

        held = loop.create_task(hook("request", 60), name="handle_hook(request)")
        loop.create_task(hook("requestheaders", 0.15, then="error"), name="handle_hook(requestheaders)")
        started = loop.time()
        await _running_hooks_done(limit=5, request_limit=0.05)
        assert finished == ["requestheaders", "error"]  # both, though past request_limit
        assert not held.done() and loop.time() - started < 5
        held.cancel()

    asyncio.run(main())
