"""Helpers for the hardening tests: one gateway per module, raw sockets, faulty upstreams.

The hardening tests attack the gateway at the byte level, so they talk to it over raw
sockets instead of through an HTTP client that would refuse to send malformed data.
"""

from __future__ import annotations

import json
import socket
import ssl
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tests.support.gateway import GatewayProcess


@contextmanager
def shared_gateway(directory: Path, confdir: Path, rules: str, *args: str) -> Iterator[GatewayProcess]:
    """A gateway for a whole test module (starting one costs about a second)."""
    path = directory / "rules.yaml"
    path.write_text(textwrap.dedent(rules))
    extra = list(args)
    if "--ui" not in extra:
        extra += ["--ui", "off"]
    gateway = GatewayProcess(path, confdir, extra).start()
    try:
        yield gateway
    finally:
        gateway.stop_soon()  # exit awaited later (tests.support.gateway.reap)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


def raw_exchange(port: int, data: bytes, timeout: float = 15) -> bytes:
    """Send bytes to the proxy; read one response (or until it closes or times out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it may refuse before reading everything; its answer is still there
        return read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    raw = b""
    try:
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                return raw
            raw += chunk
        length = parse_response(raw).headers.get("content-length")
        if length is None:
            return raw + read_until_close(sock)
        head_size = raw.index(b"\r\n\r\n") + 4
        while len(raw) < head_size + int(length):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return raw


def read_until_close(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def raw_request(port: int, data: bytes, timeout: float = 15) -> RawResponse:
    raw = raw_exchange(port, data, timeout)
    assert raw, "the gateway closed the connection without answering"
    return parse_response(raw)


def tunnel(port: int, target: str, server_name: str | None, ca_file: Path,
           timeout: float = 15) -> ssl.SSLSocket:
    """CONNECT through the proxy to target (host:port) and start TLS with server_name."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, f"proxy closed the CONNECT: {answer!r}"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False  # the test decides which name to present
    return context.wrap_socket(sock, server_hostname=server_name)


class FaultServer:
    """A TCP server on 127.0.0.1 whose connections are handled by ``behaviour(sock)``."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.behaviour(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


def recorded_flows(db: Path, where: str = "TRUE", params: list[Any] | None = None) -> list[dict]:
    """Rows of the flows table (open the file only after the gateway has stopped)."""
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute(f"SELECT * FROM flows WHERE {where} ORDER BY started_at", params or [])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
