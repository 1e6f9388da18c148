"""Let several mitmproxy processes listen on one address: the proxy's listener with SO_REUSEPORT.

Why: one mitmproxy process is one core (its event loop and the GIL), so `portcullis run
--workers N` runs N processes. They must share the agents' one proxy address; with
``SO_REUSEPORT`` (Linux 3.9+) every worker binds its own listening socket to the same
address and the kernel spreads new connections over the sockets by a hash of the
connection's addresses. A worker that dies takes only its own socket away: the kernel
sends new connections to the others, and nothing listens for the dead one.

mitmproxy opens the listener itself, with ``asyncio.start_server(handler, host, port)``
in ``AsyncioServerInstance.listen`` (mitmproxy/proxy/mode_servers.py, the same in 11.0
and 12.x), and has no option for ``reuse_port``. This module replaces ``listen`` of the
regular proxy mode only (``RegularInstance``, what `portcullis run` uses), for one
process, by :func:`install`: a TCP listener on a fixed port is opened with
``reuse_port=True``, everything else (port 0, other modes) goes to mitmproxy's own code.
The one-worker gateway never calls it and runs mitmproxy unchanged.

Security: Linux lets a socket join a reuse-port group only when it belongs to the same
effective user as the sockets already in it, so only processes of the gateway's own
user (which can read its CA key anyway) could share its connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy.proxy import mode_servers

_ORIGINAL_ATTRIBUTE = "_portcullis_original_listen"
_OWN_ATTRIBUTE = "_portcullis_own_listen"


def supported() -> bool:
    """Whether this platform's sockets have SO_REUSEPORT (Linux, the BSDs, macOS)."""
    import socket

    return hasattr(socket, "SO_REUSEPORT")


async def _listen_reuseport(self: Any, host: str, port: int) -> list[Any]:
    original: Callable[[Any, str, int], Awaitable[list[Any]]] = getattr(
        mode_servers.RegularInstance, _ORIGINAL_ATTRIBUTE)
    if port == 0 or self.mode.transport_protocol != "tcp":
        return await original(self, host, port)
    # host "" is every interface (asyncio binds one socket per address family).
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


def install() -> None:
    """Open the regular proxy mode's listener with SO_REUSEPORT in this process (idempotent)."""
    if not supported():
        raise OSError("this platform has no SO_REUSEPORT: run one worker")
    cls = mode_servers.RegularInstance
    if not hasattr(cls, _ORIGINAL_ATTRIBUTE):
        # AsyncioServerInstance.listen as RegularInstance finds it now (mitmproxy 11 or 12),
        # and whether the class had its own (restored by uninstall()).
        setattr(cls, _ORIGINAL_ATTRIBUTE, cls.listen)
        setattr(cls, _OWN_ATTRIBUTE, cls.__dict__.get("listen"))
        cls.listen = _listen_reuseport  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo :func:`install` (for tests)."""
    cls = mode_servers.RegularInstance
    if hasattr(cls, _ORIGINAL_ATTRIBUTE):
        own = getattr(cls, _OWN_ATTRIBUTE)
        if own is None:
            delattr(cls, "listen")  # back to the inherited method
        else:
            cls.listen = own  # type: ignore[method-assign]
        delattr(cls, _ORIGINAL_ATTRIBUTE)
        delattr(cls, _OWN_ATTRIBUTE)


def installed() -> bool:
    return hasattr(mode_servers.RegularInstance, _ORIGINAL_ATTRIBUTE)
