"""HTTP/1 chunked requests with trailers: hand them to the addons instead of crashing.

mitmproxy 11's HTTP/1 layer raises ``NotImplementedError("HTTP trailers are not
implemented yet.")`` from ``Http1Connection.read_body`` when a chunked request ends with
trailer fields. That happens inside the connection's protocol layer, before any addon
hook for the request runs, so no addon can answer: the connection handler dies and the
agent waits forever for a response.

:func:`install` wraps ``read_body`` so that, on the server side (the agent's
connection), the chunked body reader keeps the trailer fields as ``request.trailers``
(which is where mitmproxy's HTTP/2 layer puts request trailers) and ends the message
normally. The request hook then sees a complete request with trailers, and
addons/guards/requestguard.py refuses every request that has trailers (the policy never sees
trailer fields, and upstreams merge them into the headers).

This reaches into mitmproxy internals (``_http1.Http1Connection.read_body``, its
``body_reader`` attribute, h11's ``EndOfMessage``). If they are not there (a mitmproxy
we were not written for), install() logs an error and changes nothing: such a request
then fails as it did before, and is never forwarded. If a later mitmproxy supports
trailers itself, the wrapper still only moves them to ``request.trailers``, so the
guard's refusal stays the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import h11
from mitmproxy import http, version

log = logging.getLogger("portcullis.chunkedtrailers")

_installed = False


class _TrailerKeepingReader:
    """Wraps mitmproxy's body reader: trailers go to ``request.trailers``, not to a crash."""

    def __init__(self, reader: Any, layer: Any) -> None:
        self.reader = reader
        self.layer = layer

    def __call__(self, buf: Any) -> Any:
        event = self.reader(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            raw = getattr(event.headers, "raw_items", None)
            fields = raw() if raw is not None else list(event.headers)
            request = getattr(self.layer, "request", None)
            if request is not None:
                request.trailers = http.Headers([(bytes(n), bytes(v)) for n, v in fields])
            return h11.EndOfMessage()
        return event

    def read_eof(self) -> Any:
        return self.reader.read_eof()


def _keeping_trailers(original: Callable, server_class: type) -> Callable:
    def read_body(self: Any, event: Any) -> Any:
        reader = getattr(self, "body_reader", None)
        if (isinstance(self, server_class) and reader is not None
                and not isinstance(reader, _TrailerKeepingReader)):
            self.body_reader = _TrailerKeepingReader(reader, self)
        return (yield from original(self, event))

    read_body.__wrapped__ = original  # type: ignore[attr-defined]
    return read_body


def install() -> bool:
    """Patch mitmproxy's HTTP/1 request body reading (idempotent). False if it could not."""
    global _installed
    if _installed:
        return True
    try:
        from mitmproxy.proxy.layers.http import _http1

        connection, server = _http1.Http1Connection, _http1.Http1Server
        connection.read_body = _keeping_trailers(connection.read_body, server)
        # addons.upstreams.errorpages may already have given the server class its own read_body
        # (a wrapper of the original): wrap that one too, or it would bypass ours.
        if "read_body" in server.__dict__:
            server.read_body = _keeping_trailers(server.__dict__["read_body"], server)
    except (ImportError, AttributeError) as exc:  # pragma: no cover - another mitmproxy
        log.error("cannot handle chunked trailers on mitmproxy %s: %s", version.VERSION, exc)
        return False
    _installed = True
    return True
