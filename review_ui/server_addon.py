"""Serve the review UI from the gateway process, and keep agents away from it.

Options:
    portcullis_ui:        HOST:PORT of the review UI (default 127.0.0.1:8081; ``off`` disables it)
    portcullis_reviewers: the reviewers file (``portcullis reviewer add`` writes it)

The UI starts only with a reviewers file: without reviewers nobody could sign in.
It runs in a werkzeug server thread and reaches holds only through the holds desk
(addons.holds.desk), which carries every decision over to the proxy's event loop.
Collaborators come through the constructor (``make_addons()`` wires them): the flow
states, the desk, the recorder (the audit pages read its store), the replay addon and
the upstreams addon (its ``--resolve`` pins, for the guard below).

This addon also guards the proxy: a request *through the proxy* to the UI's own
address is refused, whatever spelling of the host the agent uses (``localhost``,
``127.1``, ``0x7f000001``, ``[::1]``, a DNS name resolving to loopback, a ``--resolve``
pin), so an agent cannot approve its own requests via the gateway. It must run before
the policy addon.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from mitmproxy import ctx, exceptions, http
from werkzeug.serving import BaseWSGIServer, make_server

from addons.core.flowstate import FlowStates
from addons.core.options import Option, register_options
from addons.core.replies import refuse
from addons.holds.desk import HoldDesk
from review_ui import close_app, create_app
from review_ui.reviewers import ReviewersError, ReviewerStore

log = logging.getLogger("portcullis.review_ui")

DEFAULT_UI = "127.0.0.1:8081"
RESOLVE_TIMEOUT_S = 2.0


def parse_ui_address(value: str) -> tuple[str, int] | None:
    if value.strip().lower() in ("", "off", "none", "false"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise exceptions.OptionsError(f"portcullis_ui: expected HOST:PORT or off, got {value!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host literal denotes, including the forms inet_aton accepts
    (``127.1``, ``2130706433``, ``0x7f.1``), which browsers and curl also accept."""
    host = host.strip().rstrip(".").strip("[]").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


#: Set in the workers of `portcullis run --workers N` other than the one serving the UI
#: (gateway/workers.py): the UI address is known, so proxied requests to it are refused
#: here too, but only one process binds it.
SERVED_ELSEWHERE_ENV = "PORTCULLIS_UI_SERVED_ELSEWHERE"

OPTIONS = (
    Option("portcullis_ui", str, DEFAULT_UI, "Review UI address HOST:PORT, or 'off'. Needs a reviewers file.",
           flag="--ui", metavar="HOST:PORT"),
    Option("portcullis_reviewers", str, "",
           "Reviewers file: names, groups, password and token hashes (portcullis reviewer add).",
           flag="--reviewers", path=True),
)


class ReviewServerAddon:
    name = "portcullis_review_ui"

    def __init__(self, states: FlowStates, holds: HoldDesk, recorder: Any = None, upstreams: Any = None,
                 replayer: Any = None, shared: Callable[[], dict[str, Any]] | None = None) -> None:
        """``holds`` is the desk the UI decides through; ``recorder`` gives the UI the
        recording; ``upstreams`` its pinned addresses, so that the UI cannot be reached
        through the proxy under a pinned name either; ``replayer`` the replay addon;
        ``shared``, asked at each (re)configuration, the cluster's session store, cookie
        key and login limits when the state is shared (``--state``), else ``{}``."""
        self.states = states
        self.holds = holds
        self.recorder = recorder
        self.upstreams = upstreams
        self.replayer = replayer
        self.shared = shared
        self.app: Flask | None = None
        self.address: tuple[str, int] | None = None
        self.reviewers: ReviewerStore | None = None
        self.server: BaseWSGIServer | None = None
        self.thread: threading.Thread | None = None
        self._local: set[str] = set()

    def load(self, loader) -> None:
        register_options(loader, OPTIONS)

    def configure(self, updated: set[str]) -> None:
        if not {"portcullis_ui", "portcullis_reviewers"} & updated:
            return
        address = parse_ui_address(ctx.options.portcullis_ui)
        path = ctx.options.portcullis_reviewers
        reviewers = None
        if path:
            if not Path(path).is_file():
                raise exceptions.OptionsError(f"portcullis_reviewers: {path} does not exist "
                                              "(create it with `portcullis reviewer add NAME`)")
            try:
                reviewers = ReviewerStore(path)
            except (ReviewersError, OSError, ValueError) as exc:
                raise exceptions.OptionsError(f"portcullis_reviewers: {exc}") from None
        self.stop()
        self.address, self.reviewers = address, reviewers
        self._local = _local_addresses(address[0]) if address else set()
        if address is None or reviewers is None or os.environ.get(SERVED_ELSEWHERE_ENV):
            return  # served elsewhere: still guarded here (the address is known), not bound
        host, port = address
        shared = self.shared() if self.shared is not None else {}
        app = self.app = create_app(
            self.holds, reviewers,
            session_store=shared.get("session_store"),
            secret_key=shared.get("secret_key"),
            recorder=lambda: self.recorder,
            replayer=lambda: self.replayer,
            allowed_hosts=_host_names(host, port),
            # Streams end after this long and browsers reconnect (tests shorten it).
            sse_lifetime=float(os.environ.get("PORTCULLIS_UI_SSE_LIFETIME", "300")),
        )
        if shared.get("login_limits") is not None:
            app.extensions["portcullis_login_limits"] = shared["login_limits"]
        try:
            self.server = make_server(host, port, app, threaded=True)
        except (OSError, SystemExit) as exc:  # werkzeug exits (SystemExit) when the port is taken
            why = exc.strerror if isinstance(exc, OSError) else "the address is in use or unavailable"
            raise exceptions.OptionsError(
                f"review UI cannot listen on {host}:{port}: {why} "
                "(pass --ui HOST:PORT or --ui off)") from None
        if self.thread is None and _loop_running():
            self._start_thread()

    def running(self) -> None:
        if self.server is not None and self.thread is None:
            self._start_thread()

    def _start_thread(self) -> None:
        assert self.server is not None
        self.thread = threading.Thread(target=self.server.serve_forever, name="portcullis-review-ui",
                                       daemon=True)
        self.thread.start()

    def done(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self.server is not None:
            if self.thread is not None:
                self.server.shutdown()
            self.server.server_close()
        self.server, self.thread = None, None
        if self.app is not None:
            close_app(self.app)  # its live feed stops listening to the desk
            self.app = None

    @property
    def url(self) -> str | None:
        if self.address is None or self.server is None:
            return None
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def banner(self) -> list[str]:
        if self.url:
            assert self.reviewers is not None
            return [f"review UI: {self.url} ({len(self.reviewers.reviewers())} reviewers)"]
        if self.address is None:
            return ["review UI: off"]
        return ["review UI: off (no --reviewers file; create one with `portcullis reviewer add`)"]

    # --- the guard ---------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and flow.error is None:
            await self._guard(flow)

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        await self._guard(flow)

    async def _guard(self, flow: http.HTTPFlow) -> None:
        if self.address is None or flow.request.port != self.address[1]:
            return
        if await self.targets_ui(flow.request.host):
            refuse(flow, self.states.of(flow), 403, "review_ui_unreachable",
                   "the review UI cannot be reached through the gateway")

    async def targets_ui(self, host: str) -> bool:
        """Whether ``host`` (on the UI's port) reaches this machine's UI listener."""
        name = host.strip().rstrip(".").lower()
        pinned = self.upstreams.pinned_address(name) if self.upstreams is not None else None
        if pinned:
            name = pinned
        address = literal_ip(name)
        if address is not None:
            return self._is_ours(address)
        if name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM),
                RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError):
            return True  # cannot tell: refuse (the connection would most likely fail anyway)
        return any(self._is_ours(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos)

    def _is_ours(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback or address.is_unspecified or str(address) in self._local


def _local_addresses(bound: str) -> set[str]:
    """Addresses of this machine that reach a listener bound to ``bound``."""
    found = {bound}
    if literal_ip(bound) is not None and not literal_ip(bound).is_unspecified:  # type: ignore[union-attr]
        return found
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(info[4][0])
    except OSError:
        pass
    return found


def _host_names(host: str, port: int) -> set[str]:
    names = {f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
    if ":" in host:
        names.add(f"[{host}]:{port}")
    if host in ("0.0.0.0", "::"):
        return set()  # reachable under any of this machine's names: no Host check possible
    return names





def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
