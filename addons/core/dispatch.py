"""One mitmproxy addon that calls every Portcullis addon's hooks, in list order.

mitmproxy calls each hook on every addon of its chain (``AddonManager.trigger_event``):
per addon and per event a ``safecall`` context manager, a coroutine, a walk of the
addon's sub-addons and a ``getattr``, whether or not the addon has the hook, and after
every flow hook an ``update`` event on all of them again. With Portcullis's two dozen
addons that was about 1.3 us per addon per event, ~0.2 ms of CPU per request
(issue 18). :class:`Dispatcher` stands in the chain for all of them: for each hook name
it holds the list of the members' bound hook methods, built once, and calls them in
order. Hooks no member has (``update`` among them) are not seen at all.

What stays the same as one addon per member:
    * order: the members' hooks run in list order, each awaited before the next;
    * errors: a member's exception is logged by mitmproxy's own ``safecall`` ("Addon
      error: ...") and the next member still runs; ``AddonHalt`` stops the remaining
      members and the rest of mitmproxy's chain, and ``OptionsError`` propagates, as
      mitmproxy does for separate addons;
    * ``load``: each member is loaded, then registered under its name
      (``ctx.master.addons.get("portcullis_recorder")``) and its commands collected,
      before the next member loads, exactly as ``AddonManager.add(*members)`` did;
    * a hook is a coroutine function when any member's is (mitmproxy calls some hooks,
      e.g. ``running`` of a script, synchronously and refuses coroutines there).

The members' hook methods are looked up when the dispatcher is built: replacing a hook
method on a member afterwards is not seen (nothing does that outside tests of single
addons, which use the addon itself, not the dispatcher).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import mitmproxy.proxy.layers  # noqa: F401  (registers the HTTP, TLS, TCP, ... hooks)
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import safecall

#: Hooks with a method of the dispatcher's own: ``load`` registers the members, ``done``
#: (the end, or mitmproxy removing the dispatcher, e.g. a reloaded script) unregisters them.
OWN = frozenset({"load", "done"})


def _name(addon: object) -> str:
    return getattr(addon, "name", addon.__class__.__name__.lower())


def _members(chain: Sequence[object]) -> list[object]:
    """The addons in mitmproxy's traversal order (an addon, then its ``addons``)."""
    out: list[object] = []
    for addon in chain:
        out.append(addon)
        if hasattr(addon, "addons"):
            out.extend(_members(addon.addons))
    return out


class Dispatcher:
    name = "portcullis"

    def __init__(self, members: Sequence[object]) -> None:
        self.members = list(members)
        self.flat = _members(self.members)
        #: hook name -> the members' bound hook methods, in order.
        self.hooks: dict[str, tuple[Callable[..., Any], ...]] = {}
        self._manager: Any = None
        done = tuple(f for f in (getattr(a, "done", None) for a in self.flat) if f is not None and callable(f))
        if any(inspect.iscoroutinefunction(f) for f in done):
            raise TypeError("a member's done is a coroutine: mitmproxy calls done synchronously on removal")
        self._done = _handler(done)
        for hook in hooks.all_hooks:
            if hook in OWN:
                continue
            funcs = tuple(f for f in (getattr(a, hook, None) for a in self.flat)
                          if f is not None and callable(f))
            if funcs:
                self.hooks[hook] = funcs
                setattr(self, hook, _handler(funcs))

    def load(self, loader: Any) -> None:
        """Load and register each member in turn, as ``AddonManager.add`` would."""
        manager = getattr(loader.master, "addons", None)  # None: a loader outside mitmproxy
        self._manager = manager
        for addon in self.members:
            chain = _members([addon])
            if manager is not None:
                for member in chain:
                    if _name(member) in manager.lookup:
                        raise exceptions.AddonManagerError(
                            f"An addon called '{_name(member)}' already exists.")
            for member in chain:
                load = getattr(member, "load", None)
                if load is not None and callable(load):
                    load(loader)
            if manager is not None:
                for member in chain:
                    manager.lookup[_name(member)] = member
                for member in chain:
                    loader.master.commands.collect_commands(member)
                loader.master.options.process_deferred()

    def done(self) -> None:
        """Every member's ``done`` in order, then their names are free again (as
        ``AddonManager.remove`` frees the names of an addon's sub-addons)."""
        try:
            self._done()
        finally:
            manager, self._manager = self._manager, None
            for member in self.flat if manager is not None else ():
                if manager.lookup.get(_name(member)) is member:
                    del manager.lookup[_name(member)]

    def banner(self) -> list[str]:
        """Every member's banner lines (``portcullis run`` prints them)."""
        return [line for addon in self.members for line in getattr(addon, "banner", lambda: [])()]


def _handler(funcs: tuple[Callable[..., Any], ...]) -> Callable[..., Any]:
    if any(inspect.iscoroutinefunction(f) for f in funcs):
        async def dispatch_async(*args: Any) -> None:
            for func in funcs:
                try:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except Exception:  # noqa: BLE001 - logged (or re-raised) as mitmproxy does
                    with safecall():
                        raise
        return dispatch_async

    def dispatch(*args: Any) -> Any:
        for index, func in enumerate(funcs):
            try:
                result = func(*args)
            except Exception:  # noqa: BLE001
                with safecall():
                    raise
                continue
            if result is not None and inspect.isawaitable(result):
                # A plain method that returned an awaitable: mitmproxy awaits what a hook
                # returns, so the rest runs after it, still in order.
                return _rest(result, funcs[index + 1:], args)
        return None
    return dispatch


async def _rest(pending: Any, funcs: tuple[Callable[..., Any], ...], args: tuple) -> None:
    try:
        await pending
    except Exception:  # noqa: BLE001
        with safecall():
            raise
    if funcs:
        result = _handler(funcs)(*args)
        if result is not None and inspect.isawaitable(result):
            await result
