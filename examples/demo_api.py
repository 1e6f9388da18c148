#!/usr/bin/env python3
"""A small demo API (customers, refunds, tables) for trying Portcullis locally.

    python examples/demo_api.py            # listens on 127.0.0.1:8900

Agents reach it through the gateway as http://api.demo.test:8900/... (rules/default.yaml
pins api.demo.test to 127.0.0.1). Stdlib only, in-memory data, loopback only.
"""

from __future__ import annotations

import argparse
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CUSTOMERS = {
    "c-1001": {
        "id": "c-1001",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "ssn": "123-45-6789",
        "card_number": "4242 4242 4242 4242",
        "notes": "Prefers phone: +44 20 7946 0958",
    },
    "c-1002": {
        "id": "c-1002",
        "name": "Alan Turing",
        "email": "alan@example.org",
        "ssn": "219-09-9999",
        "card_number": "5555 5555 5555 4444",
        "notes": "VIP since 1950",
    },
}
TABLES = {"customers": len(CUSTOMERS), "refunds": 0, "audit_log": 42}
REFUNDS: list[dict[str, Any]] = []


class DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DemoAPI/1.0"

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if url.path == "/v1/customers":
            return self._send(200, {"items": list(CUSTOMERS.values())})
        if url.path == "/v1/customers/export":
            dry_run = parse_qs(url.query).get("dry_run", ["true"])[0] != "false"
            return self._send(200, {"dry_run": dry_run, "rows": len(CUSTOMERS)})
        if match := re.fullmatch(r"/v1/customers/([\w-]+)", url.path):
            customer = CUSTOMERS.get(match.group(1))
            return self._send(200, customer) if customer else self._send(404, {"error": "no such customer"})
        if url.path == "/v1/tables":
            return self._send(200, {"tables": TABLES})
        if url.path == "/v1/refunds":
            return self._send(200, {"items": REFUNDS})
        return self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if body is None:
            return self._send(400, {"error": "expected a JSON body"})
        if self.path == "/v1/refunds":
            refund = {"id": f"r-{len(REFUNDS) + 1}", **body, "status": "issued"}
            REFUNDS.append(refund)
            return self._send(201, refund)
        if self.path == "/v1/query":
            return self._send(200, {"statement": body.get("statement"), "rows": []})
        return self._send(404, {"error": "not found"})

    def do_DELETE(self) -> None:  # noqa: N802
        if match := re.fullmatch(r"/v1/tables/(\w+)", urlsplit(self.path).path):
            existed = TABLES.pop(match.group(1), None) is not None
            return self._send(200 if existed else 404, {"deleted": existed})
        return self._send(404, {"error": "not found"})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        print(f"demo-api: {self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8900)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), DemoHandler)
    print(f"demo API listening on http://127.0.0.1:{args.port} (use http://api.demo.test:{args.port} via the gateway)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
