"""Keep an MCP client waiting on a held ``tools/call``: an SSE stream the gateway writes.

mitmproxy cannot send anything to a client while a request hook awaits (the hold), and
an SDK stops reading after its read timeout (300 s by default in mcp 1.x and 2.x) of
silence. So a held call whose client accepts ``text/event-stream`` is not kept in the
request hook: the approvals addon points the flow at this small HTTP/1.1 server on
127.0.0.1 (one path per hold, an unguessable token), mitmproxy streams what it answers,
and it answers at once with SSE headers, then every ``keepalive_s``:

* a ``notifications/progress`` message when the call carried ``_meta.progressToken``
  (the SDK resets its per-request timeout on progress when asked to, and can show it),
* an SSE comment (``: held for approval``) otherwise, which every SSE parser skips;

and, once the reviewer decided, whatever the approvals addon sends: the server's real
response (the approved call is sent upstream as its own flow, through every addon), or
the JSON-RPC denial. Then the stream ends.

Nothing but our own flows can use it: it listens on 127.0.0.1 only and a path that
names no open hold is refused. No mitmproxy here; it runs on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from addons.mcp import jsonrpc

log = logging.getLogger("portcullis.mcp.held")

KEEPALIVE_S = 10.0
MAX_HEAD = 64 * 1024
PATH_PREFIX = "/portcullis-held/"


@dataclass
class HeldStream:
    """One held call's stream: what to say while waiting, and a queue of what to send."""

    token: str
    progress_token: Any = None
    message: str = "waiting for a reviewer's approval"
    keepalive_s: float = KEEPALIVE_S
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    keepalives: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, data: bytes) -> None:
        if data:
            self.queue.put_nowait(data)

    def close(self) -> None:
        self.queue.put_nowait(None)

    def keepalive(self) -> bytes:
        self.keepalives += 1
        if self.progress_token is None:
            return jsonrpc.sse_comment(f"held for approval ({self.keepalives})")
        return jsonrpc.sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
            "progressToken": self.progress_token, "progress": self.keepalives,
            "message": self.message}})


class HeldStreams:
    """The local server and the open streams, by token."""

    def __init__(self, keepalive_s: float = KEEPALIVE_S) -> None:
        self.keepalive_s = keepalive_s
        self.streams: dict[str, HeldStream] = {}
        self._server: asyncio.AbstractServer | None = None
        self.port: int | None = None

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for stream in self.streams.values():
            stream.close()

    @property
    def running(self) -> bool:
        return self._server is not None

    def open(self, progress_token: Any = None, message: str | None = None) -> HeldStream:
        stream = HeldStream(secrets.token_urlsafe(24), progress_token,
                            message or "waiting for a reviewer's approval", self.keepalive_s)
        self.streams[stream.token] = stream
        return stream

    def path_of(self, stream: HeldStream) -> str:
        return PATH_PREFIX + stream.token

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            path = parts[1] if len(parts) > 1 else ""
            length = next((int(v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
                           if k.strip().lower() == "content-length" and v.strip().isdigit()), 0)
            if length:
                await reader.readexactly(length)
            stream = self.streams.pop(path.removeprefix(PATH_PREFIX), None) \
                if path.startswith(PATH_PREFIX) else None
            if stream is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"cache-control: no-store\r\ntransfer-encoding: chunked\r\n"
                         b"connection: close\r\n\r\n")
            stream.connected.set()
            self._chunk(writer, stream.keepalive())  # at once: the client has headers and a byte
            await writer.drain()
            while True:
                try:
                    item = await asyncio.wait_for(stream.queue.get(), stream.keepalive_s)
                except TimeoutError:
                    item = stream.keepalive()
                if item is None:
                    break
                self._chunk(writer, item)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
