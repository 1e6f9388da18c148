"""gateway/reuseport.py: two mitmproxy regular-mode listeners on one address, in-process.

mitmproxy's own listener (AsyncioServerInstance.listen) is what is adapted, so these
tests call it on real mitmproxy server instances (11.0.x on .venv, 12.x on .venv312) and
connect real sockets to it; only the connection handler is replaced by a counter.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import Counter
from collections.abc import Iterator

import pytest
from mitmproxy.proxy import mode_servers

from gateway import reuseport
from tests.support.gateway import free_port


class _Manager:
    connections: dict = {}


def _instance(name: str, seen: Counter) -> mode_servers.ServerInstance:
    instance = mode_servers.ServerInstance.make("regular", _Manager())

    async def handle_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen[name] += 1
        writer.write(name.encode())
        await writer.drain()
        writer.close()

    instance.handle_stream = handle_stream  # what the adapted listen() hands to asyncio
    return instance


async def _connect(port: int, times: int) -> Counter:
    answers: Counter = Counter()
    for _ in range(times):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers[(await reader.read()).decode()] += 1
        writer.close()
    return answers


@pytest.fixture
def installed() -> Iterator[None]:
    reuseport.install()
    try:
        yield
    finally:
        reuseport.uninstall()


def test_without_the_adaptation_a_second_listener_cannot_bind() -> None:
    assert not reuseport.installed()

    async def scenario() -> None:
        port, seen = free_port(), Counter()
        first = await _instance("a", seen).listen("127.0.0.1", port)
        try:
            with pytest.raises(OSError) as raised:
                await _instance("b", seen).listen("127.0.0.1", port)
            assert raised.value.errno == errno.EADDRINUSE
        finally:
            for server in first:
                server.close()

    asyncio.run(scenario())


def test_two_listeners_share_one_address_and_the_kernel_spreads_connections(installed: None) -> None:
    async def scenario() -> None:
        port, seen = free_port(), Counter()
        servers = [*await _instance("a", seen).listen("127.0.0.1", port),
                   *await _instance("b", seen).listen("127.0.0.1", port)]
        try:
            for server in servers:
                sock = server.sockets[0]
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
                assert sock.getsockname() == ("127.0.0.1", port)
            answers = await _connect(port, 60)
            # Spread by a hash of the client's port: both get some (all 60 on one: 2**-59).
            assert answers["a"] > 0 and answers["b"] > 0, answers
            assert answers == seen
            # One listener gone (a worker that died): every new connection reaches the other.
            servers[0].close()
            await servers[0].wait_closed()
            assert await _connect(port, 20) == Counter({"b": 20})
        finally:
            for server in servers:
                server.close()

    asyncio.run(scenario())


def test_a_process_without_reuseport_still_cannot_take_the_address(installed: None) -> None:
    async def scenario() -> None:
        port, seen = free_port(), Counter()
        servers = await _instance("a", seen).listen("127.0.0.1", port)
        try:
            with socket.socket() as other, pytest.raises(OSError) as raised:
                other.bind(("127.0.0.1", port))
            assert raised.value.errno == errno.EADDRINUSE
        finally:
            for server in servers:
                server.close()

    asyncio.run(scenario())


def test_port_zero_still_listens_and_uninstall_restores_mitmproxys_listener(installed: None) -> None:
    async def scenario() -> None:
        seen = Counter()
        servers = await _instance("a", seen).listen("127.0.0.1", 0)
        try:
            # (mitmproxy 12 picks a free port and calls listen() again with it.)
            sock = servers[0].sockets[0]
            assert await _connect(sock.getsockname()[1], 1) == Counter({"a": 1})
        finally:
            for server in servers:
                server.close()

    asyncio.run(scenario())
    reuseport.install()  # idempotent: still one level to undo
    reuseport.uninstall()
    assert not reuseport.installed()
    assert "listen" not in mode_servers.RegularInstance.__dict__
    reuseport.install()  # the fixture undoes it again


def test_the_supervisors_reservation_takes_no_connections_and_keeps_the_port(installed: None) -> None:
    """gateway/workers.reserve: bound with SO_REUSEPORT, never listening."""
    from gateway.workers import reserve

    async def scenario() -> None:
        port, seen = free_port(), Counter()
        with reserve("127.0.0.1", port):
            with socket.socket() as other, pytest.raises(OSError) as raised:
                other.bind(("127.0.0.1", port))  # nobody else gets the port
            assert raised.value.errno == errno.EADDRINUSE
            servers = await _instance("a", seen).listen("127.0.0.1", port)  # the workers do
            try:
                assert await _connect(port, 30) == Counter({"a": 30})  # none left unanswered
            finally:
                for server in servers:
                    server.close()

    asyncio.run(scenario())
