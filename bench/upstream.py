"""A fast upstream API for the benchmarks: asyncio, raw HTTP/1.1, keep-alive, 127.0.0.1 only.

Routes (any method, query ignored):

    /small     a ~100-byte JSON object
    /json1k    ~1 KiB of JSON records with e-mail, phone, card, ssn and token fields
    /json100k  ~100 KiB of the same records
    /slow      /small after a 50 ms pause (many requests in flight at once)

Run on its own (``python -m bench.upstream --port 0``) it prints ``listening PORT`` and
serves until killed; the benchmark runs it as a subprocess so its CPU is not counted
against the load generator or the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys

SLOW_DELAY_S = 0.05


def record(i: int) -> dict:
    return {
        "id": i,
        "name": f"Customer {i}",
        "email": f"customer{i}@example.com",
        "phone": f"+1-555-01{i % 100:02d}",
        "card": f"4111 1111 1111 {i % 10000:04d}",
        "ssn": f"078-05-{i % 10000:04d}",
        "token": f"tok_{i:08x}deadbeefcafe",
        "note": "lorem ipsum dolor sit amet " * 2,
    }


def records_of_size(size: int) -> bytes:
    """JSON {"records": [...]} of about `size` bytes (never less)."""
    items: list[dict] = []
    body = b""
    while len(body) < size:
        items.append(record(len(items)))
        body = json.dumps({"records": items}).encode()
    return body


BODIES: dict[str, bytes] = {
    "/small": json.dumps({"ok": True, "id": 1, "name": "small", "items": [1, 2, 3]}).encode(),
    "/json1k": records_of_size(1024),
    "/json100k": records_of_size(100 * 1024),
}
BODIES["/slow"] = BODIES["/small"]
NOT_FOUND = b'{"error": "not found"}'


def response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )


RESPONSES = {path: response(b"200 OK", body) for path, body in BODIES.items()}
RESPONSE_404 = response(b"404 Not Found", NOT_FOUND)


class UpstreamProtocol(asyncio.Protocol):
    """Parses pipelined HTTP/1.1 requests from a buffer; answers in order."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.pending: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = _content_length(head)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.answer(head)

    def answer(self, head: bytes) -> None:
        target = head.split(b" ", 2)[1].decode("latin-1")
        if "://" in target:  # absolute-form: take the path
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        path = target.split("?", 1)[0]
        payload = RESPONSES.get(path, RESPONSE_404)
        if path == "/slow":
            asyncio.get_running_loop().call_later(SLOW_DELAY_S, self.write, payload)
        else:
            self.write(payload)

    def write(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def serve(port: int, tls: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, ssl=tls, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", help="PEM certificate: serve HTTPS")
    parser.add_argument("--key", help="PEM private key for --cert")
    args = parser.parse_args(argv)
    tls = None
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
    try:
        asyncio.run(serve(args.port, tls))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
