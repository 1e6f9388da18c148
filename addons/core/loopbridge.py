"""Run a function on the proxy's event loop from another thread, and get its result.

The gateway's state (holds, grants, replays) is changed only on mitmproxy's event loop,
so it needs no locks. Other threads (the review UI's werkzeug server, the notification
pool) reach it through one :class:`LoopBridge`: ``bridge.call(fn, *args)`` schedules
``fn(*args)`` on the loop and waits for its return value or its exception. Called from
the loop itself it runs ``fn`` at once (waiting would deadlock).

The loop is attached in an addon's ``running`` hook; before that (or after the loop
stopped) :class:`LoopNotRunning` is raised rather than waiting for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0


class LoopNotRunning(RuntimeError):
    """There is no running event loop to hand the call to (not started, or stopped)."""


class LoopBusy(TimeoutError):
    """The loop did not run the call within the timeout."""


class LoopBridge:
    """One event loop, reachable from any thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def on_loop(self) -> bool:
        """Whether the caller runs on the attached loop's thread (inside a hook)."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        if loop is None or not loop.is_running() or loop.is_closed():
            raise LoopNotRunning("the gateway is not running")
        return loop

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = DEFAULT_TIMEOUT_S) -> T:
        """``fn(*args)`` run on the loop; its result, or its exception re-raised here."""
        loop = self._running_loop()
        if self.on_loop():
            return fn(*args)
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the caller gave up waiting: do not act behind its back
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise LoopBusy(f"the gateway did not answer within {timeout:g} s") from None
