"""Refuse requests whose Host header or TLS SNI names a different host than the target.

Rules match on the host the gateway connects to (the absolute URL, the CONNECT target,
or the Host header of an origin-form request). If the agent could send
``GET http://allowed.example/`` with ``Host: blocked.example``, or tunnel to
``allowed.example`` with ``SNI: blocked.example``, a shared front end (a CDN, a
virtual-hosting server, a reverse proxy) would route the request to the blocked
site: classic domain fronting. So all names in a request must agree, after
normalisation, before the policy looks at it. Ports are not compared: the connection
goes to the target's port whatever the Host header says.
"""

from __future__ import annotations

import logging

from mitmproxy import http
from mitmproxy.net.http import url

from addons.core.flowstate import FlowStates
from addons.core.normalize import normalize_host
from addons.core.replies import refuse

log = logging.getLogger("portcullis.hostcheck")


class HostCheckAddon:
    name = "portcullis_hostcheck"

    def __init__(self, states: FlowStates) -> None:
        self.states = states

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        problem = mismatch(flow)
        if problem is None:
            return
        log.warning("refused %s %s: %s", flow.request.method, flow.request.pretty_url, problem)
        refuse(flow, self.states.of(flow), 400, "host_mismatch", problem)


def mismatch(flow: http.HTTPFlow) -> str | None:
    """Why the names in this request disagree, or None if they agree."""
    target = normalize_host(flow.request.host)
    header = flow.request.host_header
    if header:
        try:
            named, _port = url.parse_authority(header, check=False)
        except ValueError:
            return f"the Host header {header!r} is not a valid authority"
        if normalize_host(named) != target:
            return f"the Host header names {named!r} but the request goes to {flow.request.host!r}"
    sni = flow.client_conn.sni
    if sni and normalize_host(sni) != target:
        return f"the TLS server name is {sni!r} but the request goes to {flow.request.host!r}"
    return None
