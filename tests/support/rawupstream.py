"""An upstream on 127.0.0.1 that records every byte it receives, for smuggling tests.

A real HTTP server parses what it reads and would hide the evidence: a smuggled second
request is either executed or dropped, and either way the test cannot see the bytes.
This server keeps the raw bytes of every connection (``received``), answers each request
head it finds with a small 200 (so the gateway gets a response and the agent is not left
waiting), and keeps reading until the peer closes, so that bytes sent after the first
request are recorded too. ``requests`` lists the request lines it parsed from the bytes,
which is what an HTTP/1.1 upstream would execute.

With ``tls`` it serves HTTPS without ALPN (like many HTTP/1.1-only servers), so a gateway
that speaks HTTP/2 to the agent must speak HTTP/1.1 to it.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time

_REQUEST_LINE = re.compile(rb"(?:^|\r\n|\n)([A-Z]{3,10}) (\S+) HTTP/1\.[01]\r?\n")
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
          b"\r\n{\"ok\":true}")


class RawUpstream:
    def __init__(self, tls: ssl.SSLContext | None = None, linger_s: float = 0.3) -> None:
        self.tls = tls
        self.linger_s = linger_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.scheme = "https" if tls else "http"
        #: The bytes of each connection, in the order connections were accepted.
        self.connections: list[bytearray] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    @property
    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c) for c in self.connections)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request line in the received bytes."""
        return [(m.decode(), t.decode("latin-1")) for m, t in _REQUEST_LINE.findall(self.received)]

    def clear(self) -> None:
        with self._lock:
            self.connections.clear()

    def wait_idle(self, quiet_s: float = 0.5, timeout: float = 5) -> None:
        """Wait until nothing has arrived for quiet_s (the gateway may still be sending)."""
        deadline = time.monotonic() + timeout
        last = self.received
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.received
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buffer = bytearray()
        with self._lock:
            self.connections.append(buffer)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(5)
            answered = 0
            while True:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                with self._lock:
                    buffer.extend(chunk)
                heads = bytes(buffer).count(b"\r\n\r\n")
                while answered < heads:  # one answer per request head seen
                    conn.sendall(ANSWER)
                    answered += 1
                    conn.settimeout(self.linger_s)  # read on a little: smuggled bytes follow
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.sock.close()
