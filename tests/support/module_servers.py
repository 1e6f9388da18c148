"""Module-scoped upstreams, for test modules that share one gateway across their tests.

Import all three into a test module; they replace conftest's per-test ``upstream`` and
``tls_upstream`` (a module-scoped gateway needs upstreams that live as long), and
``fresh_upstreams`` clears what they received and their routes before every test::

    from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest

from tests.support import certs
from tests.support.upstream import UpstreamServer


def tls_server(pki: certs.TestPki) -> UpstreamServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return UpstreamServer(tls=context).start()


@pytest.fixture(scope="module", name="upstream")
def module_upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module", name="tls_upstream")
def module_tls_upstream(pki: certs.TestPki) -> Iterator[UpstreamServer]:
    server = tls_server(pki)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_upstreams(upstream: UpstreamServer, tls_upstream: UpstreamServer) -> None:
    for server in (upstream, tls_upstream):
        server.received.clear()
        server.routes.clear()
