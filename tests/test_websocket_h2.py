"""WebSocket upgrades and HTTP/2 streams are requests like any other: the rules apply."""

from __future__ import annotations

import socket
import subprocess
import threading

import duckdb
import pytest
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

from tests.support.hardening import (
    parse_response,
    read_response,
    read_until_close,
    recorded_flows,
    shared_gateway,
)
from tests.support.module_servers import module_tls_upstream  # noqa: F401

RULES = """
    version: 1
    default: allow
    upstreams:
      - host: "127.0.0.1"
        ca_bundle: {ca}
    rules:
      - name: no-admin-socket
        match: {{path: "/ws/admin"}}
        action: block
      - name: masked-feed
        match: {{path: "/ws/feed"}}
        mask: ["$..ssn"]
      - name: no-tables
        match: {{path: "/v1/tables/**"}}
        action: block
"""


class EchoWebSocketServer:
    """A WebSocket upstream on 127.0.0.1 that echoes every message (wsproto, one thread each)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        with conn:
            while data := conn.recv(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        self.handshakes.append(event.target)
                        conn.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage | BytesMessage):
                        conn.sendall(ws.send(event.__class__(data=event.data)))
                    elif isinstance(event, CloseConnection):
                        conn.sendall(ws.send(event.response()))
                        return

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def ws_upstream():
    server = EchoWebSocketServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir, pki):
    with shared_gateway(tmp_path_factory.mktemp("ws"), confdir, RULES.format(ca=pki.ca_cert)) as gw:
        yield gw


def open_websocket(gateway, ws_upstream, path: str):
    """Send a WebSocket handshake through the proxy (absolute-form, as proxied clients do)."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    authority = f"127.0.0.1:{ws_upstream.port}"
    sock.sendall(ws.send(Request(host=authority, target=f"http://{authority}{path}")))
    return sock, ws


@pytest.mark.parametrize(("path", "field", "expected"), [
    ("/ws/admin", "rule", "no-admin-socket"),  # a block rule
    ("/ws/feed", "error", "websocket_not_maskable"),  # a masked route: messages cannot be masked
])
def test_refused_upgrades_never_reach_the_upstream(gateway, ws_upstream, path, field, expected):
    sock, _ = open_websocket(gateway, ws_upstream, path)
    with sock:
        response = parse_response(read_response(sock))
    assert response.status == 403
    assert response.json()[field] == expected
    assert path not in ws_upstream.handshakes


def curl_h2(gateway, url: str) -> tuple[str, str]:
    result = subprocess.run(
        ["curl", "-s", "--http2", "-x", gateway.proxy_url, "--cacert", str(gateway.ca_cert),
         "-X", "DELETE", "-w", "\n%{http_version} %{http_code}", url],
        capture_output=True, text=True, timeout=30, check=True,
    )
    body, _, summary = result.stdout.rpartition("\n")
    return summary, body


def test_http2_streams_are_subject_to_the_rules(gateway, tls_upstream):
    summary, body = curl_h2(gateway, f"https://127.0.0.1:{tls_upstream.port}/v1/tables/users")
    assert summary == "2 403"
    assert '"blocked_by_policy"' in body
    summary, _ = curl_h2(gateway, f"https://127.0.0.1:{tls_upstream.port}/v1/other")
    assert summary == "2 200"
    assert [r.path for r in tls_upstream.received] == ["/v1/other"]


def test_raw_tcp_through_connect_is_refused(gateway):
    accepted = []
    service = socket.socket()
    service.bind(("127.0.0.1", 0))
    service.listen(1)
    service.settimeout(3)

    def serve() -> None:
        try:
            conn, _ = service.accept()
        except OSError:
            return
        accepted.append(conn)
        conn.sendall(b"SSH-2.0-banner\r\n")

    threading.Thread(target=serve, daemon=True).start()
    target = f"127.0.0.1:{service.getsockname()[1]}"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        sock.sendall(b"\x00\x01 not TLS, not HTTP\n")
        received = read_until_close(sock)
    service.close()
    assert received == b""
    assert accepted == []


def test_allowed_websocket_works_and_is_tallied_not_recorded(gateway, ws_upstream):
    sock, ws = open_websocket(gateway, ws_upstream, "/ws/echo")
    events = []
    with sock:
        def pump():
            ws.receive_data(sock.recv(65536))
            events.extend(ws.events())

        pump()
        assert isinstance(events[0], AcceptConnection)
        sock.sendall(ws.send(TextMessage(data="secret-message-body")))
        while not any(isinstance(e, TextMessage) for e in events):
            pump()
        assert [e.data for e in events if isinstance(e, TextMessage)] == ["secret-message-body"]
        sock.sendall(ws.send(CloseConnection(code=1000)))
        while not any(isinstance(e, CloseConnection) for e in events):
            pump()
    gateway.stop()
    (flow,) = recorded_flows(gateway.db, "path = '/ws/echo'")
    assert flow["status_code"] == 101
    with duckdb.connect(str(gateway.db), read_only=True) as con:
        kinds = dict(con.execute(
            "SELECT kind, detail FROM events WHERE flow_id = ? AND kind LIKE 'websocket%'", [flow["id"]]
        ).fetchall())
        everything = str(con.execute("SELECT * FROM flows").fetchall()) + str(
            con.execute("SELECT * FROM events").fetchall())
    assert set(kinds) == {"websocket_opened", "websocket_closed"}
    assert '"messages_from_client": 1' in kinds["websocket_closed"]
    assert '"bytes_from_server": 19' in kinds["websocket_closed"]
    assert "secret-message-body" not in everything
