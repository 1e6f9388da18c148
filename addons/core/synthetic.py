"""Build an HTTP flow that did not arrive over the network (for `explain` and replays)."""

from __future__ import annotations

import time

from mitmproxy import connection, http


def make_flow(method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b"") -> http.HTTPFlow:
    """A flow with the given request, as if an agent on 127.0.0.1 had sent it."""
    request = http.Request.make(method.upper(), url, body, headers or {})
    client = connection.Client(
        peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0), timestamp_start=time.time()
    )
    server = connection.Server(address=(request.host, request.port))
    flow = http.HTTPFlow(client, server)
    flow.request = request
    return flow
