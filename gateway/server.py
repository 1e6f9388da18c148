"""Run the gateway: one mitmproxy master with the Portcullis addons, in this process.

(`portcullis run --workers N` runs N such processes: gateway/workers.py.)
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import inspect
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from mitmproxy import exceptions, options
from mitmproxy.tools.dump import DumpMaster

from addons.portcullis import make_addons
from gateway import reuseport
from gateway.agent_env import agent_environment, ensure_ca, shell_exports

#: mitmproxy addons a gateway never uses (interactive commands, map/modify/save features
#: that `portcullis run` does not expose). Every loaded addon costs hook dispatch on every
#: request (mitmproxy calls each for every event, about 1.3 µs per addon per event here;
#: docs/performance.md, "One dispatcher"), and onboarding would
#: answer http://mitm.it/ itself, before the policy sees the request.
UNUSED_MITMPROXY_ADDONS = (
    "browser", "commandhistory", "comment", "cut", "export", "onboarding", "mapremote",
    "maplocal", "modifybody", "modifyheaders", "stickyauth", "stickycookie", "save", "savehar",
    "anticache", "anticomp", "scriptloader",
    # Server replay, blocklists, upstream and proxy auth, Alt-Svc rewriting, reading flow files:
    # options Portcullis never sets, each still called on its hook for every flow.
    "blocklist", "serverplayback", "upstreamauth", "proxyauth", "updatealtsvc",
    "readfilestdin", "keepserving",
)


#: Optional modules DuckDB's Python client tries to import on every execute() with
#: parameters (to tell a pandas DataFrame from a list). When one is not installed each
#: attempt walks sys.path again (Python does not cache a failed import): measured, 90%
#: of the recorder's insert time, under the GIL the proxy's event loop needs.
PROBED_OPTIONAL_MODULES = ("pandas",)


def cache_absent_imports(names: tuple[str, ...] = PROBED_OPTIONAL_MODULES) -> list[str]:
    """Make ``import name`` fail at once for each of ``names`` that is not installed
    (a None entry in sys.modules); returns those names. Installed modules are untouched."""
    absent = [name for name in names if name not in sys.modules and importlib.util.find_spec(name) is None]
    for name in absent:
        sys.modules[name] = None  # type: ignore[assignment]
    return absent


class StartupError(Exception):
    """The gateway cannot start; the message says why and what to do."""


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # Like the listener mitmproxy opens: connections of a previous run lingering in
        # TIME_WAIT must not stop a restart (e.g. after a crash or kill -9).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"{host}:{port} is already in use: stop the other process or pass --listen HOST:PORT"
                ) from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


#: The line a worker of `portcullis run --workers N` prints after its banner, so that the
#: supervisor (gateway/workers.py) knows it listens: "<mark> <index> <pid>".
WORKER_READY_MARK = "portcullis-worker-ready"


class Banner:
    """Prints where the gateway listens and what an agent needs, once it is up."""

    name = "portcullis_banner"

    def __init__(self, lines: Callable[[], list[str]], worker: int | None = None) -> None:
        self.lines = lines
        self.worker = worker

    def running(self) -> None:
        lines = self.lines()
        if self.worker is not None:
            lines.append(f"{WORKER_READY_MARK} {self.worker} {os.getpid()}")
        print("\n".join(lines), flush=True)


async def _accepted_registered(limit: float = 0.05) -> None:
    """Let connections accepted just before the listener closed register with the proxy
    server. Each takes a few loop iterations, all without waiting for I/O: asyncio's
    accept task (``_accept_connection2``) makes the transport, whose ``connection_made``
    creates the handler task, which registers in its first step. So: iterate until no
    accept task is left and no task is still to take its first step; at most ``limit``,
    the fixed sleep this replaces (a quarter of a stop's time, for a microsecond's work)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        pending = [t for t in asyncio.all_tasks() if t is not this and _just_accepted(t)]
        if not pending or loop.time() >= deadline:
            return


def _just_accepted(task: asyncio.Task) -> bool:
    coro = task.get_coro()
    if getattr(coro, "__qualname__", "").endswith("._accept_connection2"):
        return True
    return inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED


#: How long a stop waits for hooks already running before it cuts connections: a flow
#: answered just before the stop may still have hooks to run (mitmproxy runs each hook in
#: a task of its own, "handle_hook(...)"), the recorder's among them. mitmproxy answers a
#: request it cannot parse (CL+TE, say) before its requestheaders and error hooks run, so
#: under load those can take a while to come; a fixed 0.5 s lost such a row in fresh-clone
#: runs on a busy machine.
HOOKS_GRACE_S = 3.0
#: A ``request`` hook may be a hold waiting for a reviewer (that never ends by itself): it
#: delays the stop only this long, then is cut (the flow is recorded as expired).
REQUEST_HOOK_GRACE_S = 0.5
#: The hook whose task may be a hold's wait (mitmproxy's HttpRequestHook).
_REQUEST_HOOK_TASK = "handle_hook(request)"


async def _running_hooks_done(limit: float = HOOKS_GRACE_S, request_limit: float = REQUEST_HOOK_GRACE_S) -> None:
    """Wait until no mitmproxy hook task is running: at most ``limit``, and at most
    ``request_limit`` for ``request`` hooks (holds)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        elapsed = loop.time() - started
        running = [t for t in asyncio.all_tasks() if not t.done() and t.get_name().startswith("handle_hook(")]
        if elapsed >= request_limit:
            running = [t for t in running if t.get_name() != _REQUEST_HOOK_TASK]
        if not running or elapsed >= limit:
            return
        next_deadline = request_limit if elapsed < request_limit else limit
        await asyncio.wait(running, timeout=min(next_deadline, limit) - elapsed, return_when=asyncio.FIRST_COMPLETED)


async def stop(master: DumpMaster, grace: float = 3.0) -> None:
    """Close client connections first, then stop the master.

    Stopping the master with connections still open cancels their tasks mid-flight and
    asyncio prints a CancelledError traceback per connection; closing them first lets
    every flow end through mitmproxy's normal hooks (so the recorder sees it).
    """
    proxyserver = master.addons.get("proxyserver")
    connections = getattr(proxyserver, "connections", {})
    try:
        await proxyserver.servers.update([])  # stop accepting new connections
    except Exception as exc:  # noqa: BLE001 - best effort: shutting down regardless
        logging.getLogger("portcullis").debug("could not stop listening cleanly: %s", exc)
    await _accepted_registered()
    # Without this, a flow whose answer went out just before the stop could lose its last
    # hooks, and with them its recording (seen in CI: a refused smuggling attempt's row).
    await _running_hooks_done()
    deadline = asyncio.get_running_loop().time() + grace
    # Repeat: a client may connect (or still be in its handshake) while we close the others.
    while connections and asyncio.get_running_loop().time() < deadline:
        for handler in list(connections.values()):
            transport = handler.transports.get(handler.client)
            if transport is not None and transport.handler is not None:
                transport.handler.cancel()
        await asyncio.sleep(0.02)
    master.shutdown()


async def serve(listen: tuple[str, int], mitm_options: dict[str, Any], quiet: bool = False,
                worker: int | None = None, notice: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM. Returns the process exit code.

    ``worker``: this process is worker number ``worker`` of `portcullis run --workers N`
    (gateway/workers.py): it listens with SO_REUSEPORT beside the others (the supervisor
    checked the address is free) and ends its banner with WORKER_READY_MARK.
    """
    host, port = listen
    if worker is None:
        check_port_free(host, port)
    else:
        reuseport.install()
    cache_absent_imports()
    confdir = mitm_options.get("confdir")
    ca_cert = ensure_ca(confdir) if confdir else None
    opts = options.Options(listen_host=host, listen_port=port)
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    if quiet:
        opts.update(termlog_verbosity="warn")
    for name in UNUSED_MITMPROXY_ADDONS:
        if unused := master.addons.get(name):
            master.addons.remove(unused)
    if errorcheck := master.addons.get("errorcheck"):
        errorcheck.repeat_errors_on_stderr = True
    portcullis_addons = make_addons()
    master.addons.add(*portcullis_addons)

    def banner() -> list[str]:
        env = agent_environment(host, port, ca_cert) if ca_cert else {}
        summary = [getattr(a, "banner", lambda: [])() for a in portcullis_addons]
        return [
            "Portcullis gateway ready",
            f"  proxy:    http://{host}:{port}",
            f"  CA cert:  {ca_cert}",
            *[f"  {line}" for lines in summary for line in lines],
            *[f"  {line}" for line in notice or ()],  # e.g. the first run's admin reviewer
            "Agent environment (or: eval \"$(portcullis env)\"):",
            *[f"  {line}" for line in shell_exports(env).splitlines()],
        ]

    master.addons.add(Banner(banner, worker))
    try:
        opts.update(**mitm_options)
    except exceptions.OptionsError as exc:
        raise StartupError(str(exc)) from None
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopping or stopping.append(loop.create_task(stop(master))))
    try:
        await master.run()
    except SystemExit as exc:  # mitmproxy's errorcheck exits on start-up errors
        print("portcullis: the gateway could not start (see the errors above)", file=sys.stderr)
        return int(exc.code or 1)
    return 0
