"""A bounded HTTP/1.1 load generator: N keep-alive clients, optionally through an HTTP proxy.

Plain HTTP goes to the proxy in absolute form (``GET http://host:port/path``); HTTPS opens
a ``CONNECT`` tunnel per client and runs TLS inside it, as agents using ``HTTPS_PROXY`` do.
Each client sends one request at a time on its own connection (no pipelining), so
concurrency equals the number of clients.

A window runs every client for ``warmup + duration`` seconds. Throughput counts the
responses completed inside the measured interval; latency percentiles use the requests
that both started and finished inside it. The generator's own CPU time
is reported so its ceiling can be seen in the direct run.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: A single request may not take longer than this; a stuck proxy fails the window.
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    """Where the clients connect and how they address the upstream."""

    upstream_host: str
    upstream_port: int
    tls: bool = False
    proxy: tuple[str, int] | None = None  # None: direct to the upstream


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""

    def encode(self, target: Target) -> bytes:
        authority = f"{target.upstream_host}:{target.upstream_port}"
        # Through a plain-HTTP proxy the request line carries the absolute URL.
        line_target = self.path if target.proxy is None or target.tls else f"http://{authority}{self.path}"
        head = f"{self.method} {line_target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: portcullis-bench\r\n"
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        return (head + "\r\n").encode() + self.body


@dataclass
class WindowResult:
    clients: int
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    loadgen_cpu: float = 0.0
    bodies: list[bytes] = field(default_factory=list)  # kept by run_count only
    completed: int = 0  # responses that arrived inside the measured interval

    @property
    def requests(self) -> int:
        return self.completed

    @property
    def rps(self) -> float:
        return self.completed / self.duration if self.duration else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile in milliseconds (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] * 1000


class ProtocolError(Exception):
    pass


async def _open(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    client_tls = _client_tls() if target.tls else None
    if target.proxy is None:
        return await asyncio.open_connection(target.upstream_host, target.upstream_port, ssl=client_tls)
    reader, writer = await asyncio.open_connection(*target.proxy)
    if client_tls is not None:
        authority = f"{target.upstream_host}:{target.upstream_port}"
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        status, _ = await _read_response(reader)
        if status != 200:
            raise ProtocolError(f"CONNECT answered {status}")
        await writer.start_tls(client_tls, server_hostname=target.upstream_host)
    return reader, writer


def _client_tls() -> ssl.SSLContext:
    # The proxy's certificates are not what is measured; trust them without checking.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        return status, await _read_chunked(reader)
    return status, await reader.readexactly(length or 0)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _client(
    target: Target, requests: Sequence[bytes], offset: int, result: WindowResult,
    window: _Window,
) -> None:
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    i = offset
    try:
        while not window.stopped:
            try:
                if connection is None:
                    connection = await asyncio.wait_for(_open(target), REQUEST_TIMEOUT_S)
                reader, writer = connection
                started = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, _ = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_S)
                finished = time.perf_counter()
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ProtocolError, ValueError, asyncio.LimitOverrunError) as exc:
                if window.measuring and not window.stopped:
                    result.errors[type(exc).__name__] += 1
                connection = _close(connection)
                await asyncio.sleep(0.01)  # do not spin on a dead proxy
                continue
            i += 1
            if window.measuring and not window.stopped:
                result.completed += 1
                result.statuses[status] += 1
                if window.measure_start <= started:
                    result.latencies.append(finished - started)
    finally:
        _close(connection)


def _close(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if connection is not None:
        connection[1].close()
    return None


class _Window:
    def __init__(self) -> None:
        self.measure_start = float("inf")
        self.measuring = False
        self.stopped = False


async def run_window(
    target: Target,
    requests: Sequence[Request],
    clients: int,
    duration: float,
    warmup: float = 1.0,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> WindowResult:
    """Run `clients` keep-alive clients for warmup + duration seconds; measure the latter.

    on_start/on_stop are called exactly at the edges of the measured interval (used to
    sample the proxy's CPU time).
    """
    encoded = [r.encode(target) for r in requests]
    result = WindowResult(clients)
    window = _Window()
    tasks = [
        asyncio.create_task(_client(target, encoded, n, result, window)) for n in range(clients)
    ]
    await asyncio.sleep(warmup)
    if on_start:
        on_start()
    cpu0 = time.process_time()
    window.measure_start = t0 = time.perf_counter()
    window.measuring = True
    await asyncio.sleep(duration)
    window.stopped = True
    result.duration = time.perf_counter() - t0
    result.loadgen_cpu = time.process_time() - cpu0
    if on_stop:
        on_stop()
    # In-flight requests are not counted; give them a moment, then cut them off.
    _, pending = await asyncio.wait(tasks, timeout=2.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return result


async def run_count(target: Target, requests: Sequence[Request], clients: int, count: int,
                    timeout: float, keep_bodies: bool = False) -> WindowResult:
    """Send exactly `count` requests (bounded by `timeout` seconds) over `clients` connections."""
    encoded = [r.encode(target) for r in requests]
    result = WindowResult(clients)
    window = _Window()
    window.measure_start = 0.0
    window.measuring = True
    remaining = [count]

    async def client(n: int) -> None:
        connection = await _open(target)
        i = n
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                reader, writer = connection
                started = time.perf_counter()
                writer.write(encoded[i % len(encoded)])
                status, body = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.completed += 1
                if keep_bodies:
                    result.bodies.append(body)
                result.statuses[status] += 1
                i += 1
        finally:
            _close(connection)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(clients))), timeout)
    result.duration = time.perf_counter() - t0
    return result
