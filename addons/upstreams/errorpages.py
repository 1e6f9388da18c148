"""JSON error answers instead of mitmproxy's HTML error pages.

When mitmproxy cannot complete a request itself (the agent sent malformed HTTP, the
upstream is down, reset the connection, failed TLS, or was cut off by the upstream
timeout) it writes an HTML page straight to the client from inside its HTTP/1 and
HTTP/2 protocol layers; no addon hook can replace that response. Agents need
machine-readable errors, so :func:`install` wraps the three places that write those
pages (``_http1.make_error_response``, ``Http1Server.send`` and
``Http2Server._handle_event`` for ``ResponseProtocolError``) to write
``{"error": <kind>, "reason": <mitmproxy's message>, "detail": <the same>, "flow_id": ...}``
instead. A JSON-RPC request (an MCP call) gets that body as the ``data`` of a JSON-RPC
error per request id instead (code -32006, HTTP 200; addons.core.replies.error_shape,
the same denial-shape seam as every refusal), so an MCP SDK surfaces the failure as the
call's error and its session goes on (docs/mcp.md).

This reaches into mitmproxy internals, so it is written for the mitmproxy majors in
:data:`SUPPORTED_MAJORS` (CI runs the suite on both: Python 3.11 + mitmproxy 11 and
Python 3.12 + mitmproxy 12; tests/test_errorpages_versions.py proves the patch applies
on each). On any other major, install() logs an error naming the installed version and
the supported ones, which stops the gateway at start-up (mitmproxy's errorcheck exits on
errors logged while loading) rather than running with HTML error pages or a patch that
misbehaves. If a supported major's internals change shape anyway, install() logs an
error the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import version
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import ResponseProtocolError, _http1, _http2

from addons.core.replies import DECISION_HEADER, FLOW_ID_HEADER, error_shape

log = logging.getLogger("portcullis.errorpages")

#: mitmproxy major versions whose internals the patch below is written and tested for.
SUPPORTED_MAJORS = (11, 12)

#: client connection id -> (flow id, error kind), set by the error hook for the flow
#: whose error page is about to be written on that connection (HTTP/1: one at a time).
pending: dict[str, tuple[str, str]] = {}
#: HTTP/2: (client connection id, mitmproxy's message) -> [(flow id, error kind)], in the
#: order of the error hooks; the page for a stream carries only the message, and the
#: error hook runs just before mitmproxy writes that stream's page.
pending_h2: dict[tuple[str, str], list[tuple[str, str]]] = {}


def expect_page(client_id: str, http_version: str, message: str, flow_id: str, kind: str) -> None:
    """Called by the error hook: the next error page for this message names this flow."""
    if http_version.startswith("HTTP/1"):
        pending[client_id] = (flow_id, kind)
    else:
        pending_h2.setdefault((client_id, message), []).append((flow_id, kind))


def forget_client(client_id: str) -> None:
    pending.pop(client_id, None)
    for key in [key for key in pending_h2 if key[0] == client_id]:
        del pending_h2[key]


def _h2_flow(client_id: str, message: str) -> tuple[str | None, str | None]:
    waiting = pending_h2.get((client_id, message))
    if not waiting:
        return None, None
    found = waiting.pop(0)
    if not waiting:
        del pending_h2[(client_id, message)]
    return found


def classify(status: int, message: str) -> tuple[int, str]:
    """The status and machine-readable kind for one of mitmproxy's error messages."""
    text = message.lower()
    if status == 413:
        return 413, "request_too_large"
    if 400 <= status < 500:
        return status, "bad_request"
    if "tls" in text or "ssl" in text or "certificate" in text:
        return 502, "upstream_tls_error"
    if any(word in text for word in (
        "connect call failed", "connection refused", "name or service not known",
        "temporary failure in name resolution", "no address associated", "network is unreachable",
        "no route to host", "cannot connect", "destination unknown", "errno", "getaddrinfo",
        "multiple exceptions",
    )):
        return 502, "upstream_unreachable"
    if "closed" in text or "disconnect" in text or "reset" in text:
        return 502, "upstream_closed"
    return 502, "upstream_protocol_error"


def http_status(code: Any) -> int | None:
    """The HTTP status of a ResponseProtocolError code, None for "send no response".

    mitmproxy 11 passes a status (``NO_RESPONSE`` for none); mitmproxy 12 an ``ErrorCode``.
    """
    if hasattr(code, "http_status_code"):
        return code.http_status_code()
    return None if code == status_codes.NO_RESPONSE else int(code)


def render(status: int, message: str, kind: str | None = None,
           flow_id: str | None = None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, JSON body and headers of an error answer."""
    if kind is None or status < 500:
        status, kind = classify(status, message)
    elif kind == "upstream_timeout":
        status, message = 504, "no complete response from the upstream within portcullis_upstream_timeout"
    # "reason" as in every other refusal; "detail" kept for clients written against 0.1.
    body: dict[str, Any] = {"error": kind, "reason": message, "detail": message}
    if flow_id:
        body["flow_id"] = flow_id
    content_type = "application/json"
    shape = error_shape(flow_id) if status >= 500 else None
    if shape is not None:  # a JSON-RPC request (MCP): one JSON-RPC error per id, HTTP 200
        status, text, content_type = shape.render(status, body)
        payload = text.encode()
    else:
        payload = json.dumps(body, ensure_ascii=False).encode()
    headers = [
        (b"content-type", content_type.encode()),
        (b"cache-control", b"no-store"),
        (DECISION_HEADER.lower().encode(), b"error"),
    ]
    if flow_id:
        headers.append((FLOW_ID_HEADER.lower().encode(), flow_id.encode()))
    return status, payload, headers


def _http1_bytes(status: int, message: str, conn_id: str | None = None) -> bytes:
    flow_id, kind = pending.pop(conn_id, (None, None)) if conn_id else (None, None)
    status, payload, headers = render(status, message, kind, flow_id)
    reason = status_codes.RESPONSES.get(status, "Error").encode()
    head = [b"HTTP/1.1 %d %s" % (status, reason), b"connection: close",
            b"content-length: %d" % len(payload)]
    head += [name + b": " + value for name, value in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + payload


def _http1_send(original: Callable) -> Callable:
    def send(self: _http1.Http1Server, event: Any) -> commands.CommandGenerator[None]:
        if not isinstance(event, ResponseProtocolError):
            return (yield from original(self, event))
        # Mirrors Http1Server.send for this event, with a JSON body.
        if not (self.conn.state & ConnectionState.CAN_WRITE):
            return None
        status = http_status(event.code)
        if not self.response and status is not None:
            yield commands.SendData(self.conn, _http1_bytes(status, event.message, self.conn.id))
        yield commands.CloseConnection(self.conn)
        return None

    send.__wrapped__ = original  # type: ignore[attr-defined]
    return send


def _http1_read_body(original: Callable) -> Callable:
    """A malformed request body (bad chunked encoding) gets a 400 before the close,
    instead of a silently dropped connection."""

    def read_body(self: _http1.Http1Connection, event: Any) -> commands.CommandGenerator[None]:
        held: commands.CloseConnection | None = None
        for command in original(self, event):
            if (isinstance(self, _http1.Http1Server) and isinstance(command, commands.CloseConnection)
                    and command.connection is self.conn and held is None):
                held = command
                continue
            if held is not None:
                message = getattr(getattr(command, "event", None), "message", None)
                if message and self.conn.state & ConnectionState.CAN_WRITE and not self.response:
                    yield commands.SendData(self.conn, _http1_bytes(400, message))
                yield held
                held = None
            yield command
        if held is not None:
            yield held

    read_body.__wrapped__ = original  # type: ignore[attr-defined]
    return read_body


def _http2_handle_event(original: Callable) -> Callable:
    def handle_event(self: _http2.Http2Server, event: Any) -> commands.CommandGenerator[None]:
        if not (isinstance(event, ResponseProtocolError) and http_status(event.code) is not None
                and not self.is_closed(event.stream_id) and self.is_open_for_us(event.stream_id)
                and not self.h2_conn.streams[event.stream_id].state_machine.headers_sent):
            return (yield from original(self, event))
        flow_id, kind = _h2_flow(self.conn.id, event.message)
        status, payload, headers = render(http_status(event.code) or 502, event.message, kind, flow_id)
        self.h2_conn.send_headers(event.stream_id, [(b":status", b"%d" % status), *headers])
        self.h2_conn.send_data(event.stream_id, payload, end_stream=True)
        data = self.h2_conn.data_to_send()
        if data:
            yield commands.SendData(self.conn, data)
        return None

    handle_event.__wrapped__ = original  # type: ignore[attr-defined]
    return handle_event


_installed = False


def unsupported_version(installed: str) -> str | None:
    """Why this mitmproxy version cannot be patched, or None if it is supported."""
    major = installed.split(".", 1)[0]
    if major.isdigit() and int(major) in SUPPORTED_MAJORS:
        return None
    supported = " and ".join(f"{m}.x" for m in SUPPORTED_MAJORS)
    return (f"Portcullis does not support mitmproxy {installed}: its JSON error answers patch "
            f"mitmproxy internals and are written for mitmproxy {supported}. "
            f"Install a supported version, e.g. pip install 'mitmproxy>={SUPPORTED_MAJORS[0]},"
            f"<{SUPPORTED_MAJORS[-1] + 1}'.")


def install() -> bool:
    """Patch mitmproxy's error pages (idempotent). Returns False if it could not.

    Failing is logged as an error, which makes mitmproxy refuse to start.
    """
    global _installed
    if _installed:
        return True
    refusal = unsupported_version(version.VERSION)
    if refusal is not None:
        log.error(refusal)
        return False
    try:
        _http1.make_error_response = lambda status, message="": _http1_bytes(status, message)
        _http1.Http1Server.send = _http1_send(_http1.Http1Server.send)
        _http1.Http1Server.read_body = _http1_read_body(_http1.Http1Connection.read_body)
        _http2.Http2Server._handle_event = _http2_handle_event(_http2.Http2Server._handle_event)
    except AttributeError as exc:  # pragma: no cover - a mitmproxy we were not written for
        log.error("cannot install JSON error answers on mitmproxy %s: %s", version.VERSION, exc)
        return False
    _installed = True
    return True
