"""The recorder end to end: a real gateway, real upstreams and clients, a real DuckDB file.

The tests up to test_no_secret_reaches_the_disk share the module's gateway (its
recording was seeded with an old and a recent flow, for the retention it runs on start);
they run in file order, and that last one stops it. The two crash tests share one gateway
killed with SIGKILL and its restart (the ``crash`` fixture); the last two start gateways of
their own (a refused start, other options).
"""

from __future__ import annotations

import json
import socket
import struct
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import requests

from recordings.store import Store, micros
from tests.support.gateway import GatewayProcess
from tests.support.module_servers import module_upstream  # noqa: F401  (the module's upstream)
from tests.support.recording_reader import NO_DELETES as RULES
from tests.support.recording_reader import poll
from tests.support.recording_reader import proxied_session as client
from tests.support.recording_reader import query as sql
from tests.support.recording_reader import wait_for_flow as wait_flow
from tests.support.recording_reader import wait_for_rows as wait_for
from tests.support.upstream import Canned

#: The credential the module's gateway injects (from its environment) for /secret/**.
INJECTED = f"inj-{uuid.uuid4().hex}"
CREDENTIALS = """
    credentials:
      - name: test-key
        match: {path: "/secret/**"}
        set_header: {X-Api-Key: "${env:PORTCULLIS_TEST_KEY}"}
        query: {api_key: "${env:PORTCULLIS_TEST_KEY}"}
        plain_http: true
"""
DAY = 86_400


def open_when_written(db: Path, timeout: float = 20) -> duckdb.DuckDBPyConnection:
    """The file, read-only, once the recording process of a killed gateway has written
    what it was handed and exited (it holds the file until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return duckdb.connect(str(db), read_only=True)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start(tmp: Path, confdir: Path, *args: str, rules: str = RULES,
          env: dict[str, str] | None = None) -> GatewayProcess:
    path = tmp / f"rules-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(textwrap.dedent(rules))
    return GatewayProcess(path, confdir, list(args), env).start()


def seed_old_and_recent(db: Path) -> None:
    """A recording with a flow (and its event) of 40 days ago and one of yesterday."""
    store = Store(db)
    now = time.time()
    cur = store.cursor()
    store.insert(cur, [{"id": "ancient", "started_at": micros(now - 40 * DAY), "decision": "allowed"},
                       {"id": "recent", "started_at": micros(now - DAY), "decision": "allowed"}],
                 [{"seq": 1, "flow_id": "ancient", "at": micros(now - 40 * DAY), "kind": "received"},
                  {"seq": 2, "flow_id": "recent", "at": micros(now - DAY), "kind": "received"}])
    cur.close()
    store.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir, upstream) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("recorder")
    db = tmp / "recording.duckdb"
    seed_old_and_recent(db)
    gw = start(tmp, confdir, "--db", str(db), "--max-body-record", "4096", "--retain-days", "30",
               rules=textwrap.dedent(RULES) + textwrap.dedent(CREDENTIALS),
               env={"PORTCULLIS_TEST_KEY": INJECTED})
    yield gw
    gw.stop_soon()


def test_row_counts_match_requests_under_concurrency(gateway, upstream):
    session_id = f"load-{uuid.uuid4().hex}"
    clients, per_client = 10, 25  # 250 flows from 10 agents at once
    failures: list[str] = []

    def agent() -> None:
        with client(gateway) as http:
            for index in range(per_client):
                response = http.get(upstream.url(f"/load/{index}"),
                                    headers={"X-Portcullis-Session": session_id}, timeout=30)
                if response.status_code != 200:
                    failures.append(response.text)

    threads = [threading.Thread(target=agent) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    total = clients * per_client
    assert wait_for(gateway.db, f"SELECT count(*), count(DISTINCT id) FROM flows "
                                f"WHERE session_id = '{session_id}'", [(total, total)]) == [(total, total)]
    received = sql(gateway.db, f"""
        SELECT count(*) FROM events e JOIN flows f ON f.id = e.flow_id
        WHERE f.session_id = '{session_id}' AND e.kind = 'received'""")
    assert received == [(total,)]


def test_allowed_flow_has_every_column(gateway, upstream):
    upstream.routes["/v1/orders"] = Canned(201, {"ok": True, "note": "ünï"})
    response = client(gateway).post(
        upstream.url("/v1/orders?page=2&q=x"), json={"amount": 10},
        headers={"X-Portcullis-Session": "s-allowed", "X-Custom": "kept"}, timeout=10)
    assert response.status_code == 201
    flow_id = response.headers["X-Portcullis-Flow-Id"]
    row = wait_flow(gateway.db, flow_id)
    assert row["decision"] == "allowed"
    assert (row["method"], row["scheme"], row["host"], row["port"]) == ("POST", "http", "127.0.0.1", upstream.port)
    assert (row["path"], row["query"]) == ("/v1/orders", "page=2&q=x")
    assert row["session_id"] == "s-allowed"
    assert row["identity"] == "anonymous"
    assert row["client_addr"].startswith("127.0.0.1:")
    assert row["status_code"] == 201
    assert json.loads(row["request_body"]) == {"amount": 10}
    assert row["request_size"] == len(b'{"amount": 10}')
    assert json.loads(row["response_body"]) == {"ok": True, "note": "ünï"}
    assert row["response_size"] == len(response.content)
    request_headers = json.loads(row["request_headers"])
    assert request_headers["x-custom"] == "kept"
    assert "x-portcullis-session" not in request_headers  # stripped before forwarding
    assert json.loads(row["response_headers"])["x-portcullis-decision"] == "allowed"
    assert row["started_at"] <= row["ended_at"] and row["duration_ms"] >= 0
    assert row["rules"] == [] and row["error"] is None and row["replay_of"] is None
    assert (row["request_truncated"], row["response_truncated"], row["masked"]) == (False, False, 0)
    kinds = [kind for (kind,) in sql(gateway.db, f"SELECT kind FROM events WHERE flow_id = '{flow_id}' ORDER BY seq")]
    assert kinds[:3] == ["received", "decided", "forwarded"] and "completed" in kinds


def test_blocked_flow_is_recorded(gateway, upstream):
    response = client(gateway).delete(upstream.url("/v1/tables/users"), timeout=10)
    assert response.status_code == 403
    flow_id = response.json()["flow_id"]
    row = wait_flow(gateway.db, flow_id)
    assert (row["decision"], row["rules"], row["reason"], row["status_code"]) == \
        ("blocked", ["no-deletes"], "Agents may not delete", 403)
    assert json.loads(row["response_body"])["flow_id"] == flow_id
    assert all(r.method != "DELETE" for r in upstream.received)


def test_upstream_down_is_recorded_as_error(gateway):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        response = client(gateway).get(f"http://127.0.0.1:{port}/v1/x", timeout=10)
        assert response.status_code == 502
        flow_id = response.headers.get("X-Portcullis-Flow-Id") or response.json()["flow_id"]
    row = wait_flow(gateway.db, flow_id)
    assert row["decision"] == "error"
    assert row["error"] and row["port"] == port and row["status_code"] is None
    assert row["path"] == "/v1/x"


def test_connection_reset_is_recorded_as_error(gateway):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def reset_everything() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        # SO_LINGER 0: close() sends RST instead of FIN.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()

    threading.Thread(target=reset_everything, daemon=True).start()
    try:
        response = client(gateway).get(f"http://127.0.0.1:{listener.getsockname()[1]}/reset", timeout=10)
    finally:
        listener.close()
    assert response.status_code == 502
    row = wait_flow(gateway.db, response.json()["flow_id"])
    assert row["decision"] == "error" and row["error"] and row["path"] == "/reset"


def test_large_and_binary_bodies_are_capped_not_dropped(gateway, upstream):
    binary = bytes(range(256)) * 40  # 10240 bytes with NULs
    upstream.routes["/bin"] = Canned(200, binary, {"Content-Type": "application/octet-stream"})
    response = client(gateway).post(upstream.url("/bin"), data="é" * 5000, timeout=10)  # 10000 bytes
    assert response.content == binary
    row = wait_flow(gateway.db, response.headers["X-Portcullis-Flow-Id"])
    assert (row["request_size"], row["request_truncated"]) == (10_000, True)
    assert row["request_body"] == "é" * 2048  # 4096 bytes, cut on a character boundary
    assert (row["response_size"], row["response_truncated"], row["response_body"]) == (10_240, True, None)
    assert row["response_body_blob"].startswith("base64:")


def test_retention_runs_on_start_and_says_what_it_deleted(gateway):
    gateway.wait_for_output("deleted 1 flows and 1 events")
    seeded = "('ancient', 'recent')"
    assert sql(gateway.db, f"SELECT id FROM flows WHERE id IN {seeded}") == [("recent",)]
    assert sql(gateway.db, f"SELECT flow_id FROM events WHERE flow_id IN {seeded}") == [("recent",)]


def test_when_recording_fails_forwarding_stops_and_resumes(gateway, upstream):
    import resource

    assert gateway.process is not None
    http = client(gateway)
    assert http.get(upstream.url("/before"), timeout=10).status_code == 200
    soft, hard = resource.prlimit(gateway.process.pid, resource.RLIMIT_FSIZE)
    forwarded = len(upstream.received)
    mark = len(gateway.lines)
    try:
        # A real write failure: the kernel refuses to grow any file of the gateway process.
        resource.prlimit(gateway.process.pid, resource.RLIMIT_FSIZE, (1, hard))
        refused = http.get(upstream.url("/during"), timeout=10)
        assert refused.status_code == 503
        assert refused.json()["error"] == "recording_unavailable"
        assert len(upstream.received) == forwarded  # not forwarded
        gateway.wait_for_output_after(mark, "recording failed")
        again = http.get(upstream.url("/during"), timeout=10)
        assert again.status_code == 503
    finally:
        resource.prlimit(gateway.process.pid, resource.RLIMIT_FSIZE, (soft, hard))
    after = poll(lambda: http.get(upstream.url("/after"), timeout=10), lambda r: r.status_code == 200,
                 interval=0.2)
    assert after.status_code == 200, after.text
    gateway.wait_for_output_after(mark, "recording works again")
    rows = wait_for(gateway.db, "SELECT path, decision, reason FROM flows WHERE path = '/during'",
                    [("/during", "error", "recording_unavailable")] * 2)
    assert rows == [("/during", "error", "recording_unavailable")] * 2


def test_no_secret_reaches_the_disk(gateway, upstream):
    """The last test of the module's gateway: it stops it, to read the file at rest too."""
    agent_token, cookie = (f"{name}-{uuid.uuid4().hex}" for name in ("tok", "ck"))
    marker = f"visible-{uuid.uuid4().hex}"  # proves the grep can see recorded text at all
    upstream.routes["/secret/login"] = Canned(200, {"ok": True},
                                              {"Set-Cookie": f"session={cookie}; HttpOnly"})
    try:
        http = client(gateway)
        for path in ("/secret/echo", "/secret/login"):
            response = http.post(upstream.url(f"{path}?m={marker}"), json={"marker": marker},
                                 headers={"Authorization": f"Bearer {agent_token}",
                                          "Cookie": f"sid={cookie}", "X-Marker": marker}, timeout=10)
            assert response.status_code == 200
        assert any(INJECTED in r.path for r in upstream.received)  # it really was injected
        row = wait_flow(gateway.db, response.headers["X-Portcullis-Flow-Id"])
        assert json.loads(row["request_headers"])["x-api-key"] == "[redacted]"
        assert json.loads(row["response_headers"])["set-cookie"] == "[redacted]"
        live = _raw_bytes(gateway.db)
        assert marker.encode() in live
    finally:
        assert gateway.stop() == 0
    on_disk = _raw_bytes(gateway.db)
    assert marker.encode() in on_disk
    for secret in (INJECTED, agent_token, cookie):
        assert secret.encode() not in live
        assert secret.encode() not in on_disk


def _raw_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())


HOLD_REFUNDS = """
  - name: hold-refunds
    match: {path: /v1/refunds}
    action: hold
    timeout: 60s
"""
#: The load of the killed gateway's agents; the other flows of the scenario are under /v1/.
LOAD_PATHS = ("/fast", "/slow")


@dataclass
class Crash:
    """What a gateway killed with SIGKILL left, and the gateway restarted on its recording."""

    killed: GatewayProcess
    completed: list[tuple[str, float]]  # (flow id, answered at) of the agents' flows
    killed_at: float
    recorded_at_kill: set[str]  # the flows in the file before the restart
    denied: requests.Response
    again: GatewayProcess


@pytest.fixture(scope="module")
def crash(tmp_path_factory, confdir, upstream) -> Iterator[Crash]:
    """One gateway, killed with SIGKILL while agents load it, one flow is held, one was
    abandoned while held and a denial was just answered; then restarted on its recording.
    The two tests below read what the restart recovered; the second stops the restart."""
    tmp = tmp_path_factory.mktemp("crash")
    upstream.routes["/slow"] = lambda seen: (time.sleep(0.3), Canned(200, b"slow"))[1]
    gw = start(tmp, confdir, rules=textwrap.dedent(RULES) + HOLD_REFUNDS)
    completed: list[tuple[str, float]] = []
    stop = threading.Event()

    def agent(path: str) -> None:
        with client(gw) as http:
            while not stop.is_set():
                try:
                    response = http.get(upstream.url(path), timeout=5)
                except requests.RequestException:
                    return  # the gateway died
                completed.append((response.headers["X-Portcullis-Flow-Id"], time.time()))

    threads = [threading.Thread(target=agent, args=(p,)) for p in [LOAD_PATHS[0]] * 6 + [LOAD_PATHS[1]] * 2]
    for thread in threads:
        thread.start()
    waiting = threading.Thread(target=lambda: _quietly(client(gw).post, upstream.url("/v1/refunds"),
                                                       json={"amount": 7}, timeout=30), daemon=True)
    waiting.start()
    held = wait_for(gw.db, "SELECT count(*) FROM events WHERE kind = 'held'", [(1,)])
    assert held == [(1,)]
    # An agent that gives up while held (it closes its connection once the flow is held,
    # unanswered): the approvals addon kills the flow -> `error` hook.
    body = b'{"amount": 8}'
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as impatient:
        impatient.sendall(f"POST {upstream.url('/v1/refunds?impatient=1')} HTTP/1.1\r\n"
                          f"Host: 127.0.0.1:{upstream.port}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        held = wait_for(gw.db, "SELECT count(*) FROM events WHERE kind = 'held'", [(2,)])
        assert held == [(2,)]
        impatient.setblocking(False)
        with pytest.raises(BlockingIOError):
            impatient.recv(1)  # held: not answered
    abandoned = wait_for(gw.db, "SELECT decision FROM flows WHERE query = 'impatient=1'", [("abandoned",)])
    assert abandoned == [("abandoned",)]
    deadline = time.monotonic() + 20  # enough completed flows whatever the machine's load
    while sum(1 for _, at in completed if at <= time.time() - 1) <= 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    denied = client(gw).delete(upstream.url("/v1/tables/users"), timeout=10)
    assert gw.process is not None
    gw.process.kill()  # at once: the denial's row was not committed yet, only journaled
    killed_at = time.time()
    gw.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(10)
    con = open_when_written(gw.db)  # reopens without error (WAL replayed)
    recorded = {flow_id for (flow_id,) in con.execute("SELECT id FROM flows").fetchall()}
    con.close()
    again = start(tmp, confdir, "--db", str(gw.db), rules=textwrap.dedent(RULES) + HOLD_REFUNDS)
    yield Crash(gw, completed, killed_at, recorded, denied, again)
    again.stop_soon()


def test_kill_9_loses_no_completed_flow_and_restart_closes_open_ones(crash):
    must_have = {flow_id for flow_id, at in crash.completed if at <= crash.killed_at - 1}
    assert len(must_have) > 50
    assert must_have - crash.recorded_at_kill == set()
    lost = sql(crash.again.db, """SELECT count(*) FROM events e WHERE kind = 'received'
                                  AND NOT EXISTS (SELECT 1 FROM flows f WHERE f.id = e.flow_id)""")
    assert lost == [(0,)]
    # Even flows answered in the last second were journaled before they were forwarded.
    every_row = {flow_id for (flow_id,) in sql(crash.again.db, "SELECT id FROM flows")}
    assert {flow_id for flow_id, _ in crash.completed} - every_row == set()
    restarted = sql(crash.again.db, "SELECT decision, count(*) FROM flows WHERE reason = 'gateway_restart' "
                                    f"AND path IN {LOAD_PATHS} GROUP BY ALL")
    assert all(decision == "error" for decision, _ in restarted)


def test_flows_open_or_just_denied_when_the_gateway_died_are_recorded_on_restart(crash):
    """The last test of the crash fixture: it stops the restarted gateway."""
    assert crash.denied.status_code == 403
    again, scenario = crash.again, "path LIKE '/v1/%'"
    try:
        again.wait_for_output("flows were unfinished")
        rows = sql(again.db, "SELECT path, decision, rules, reason, status_code FROM flows "
                             f"WHERE query IS NULL AND {scenario} ORDER BY path")
        assert rows == [("/v1/refunds", "expired", [], "gateway_restart", None),
                        ("/v1/tables/users", "blocked", ["no-deletes"], "Agents may not delete", 403)]
        assert sql(again.db, "SELECT kind FROM events WHERE kind = 'expired'") == [("expired",)]
        assert sql(again.db, "SELECT count(*) FROM events e JOIN flows f ON f.id = e.flow_id "
                             f"WHERE e.kind = 'received' AND {scenario}") == [(3,)]
    finally:
        again.stop()
    db = crash.killed.db
    assert list(db.parent.glob(db.name + ".journal.*")) == []  # clean stop: nothing left


def _quietly(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except requests.RequestException:
        pass  # the gateway was killed under it


def test_a_recording_from_a_newer_portcullis_stops_the_start_with_a_clear_message(tmp_path, confdir):
    db = tmp_path / "newer.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    con.execute("INSERT INTO schema_version VALUES (99, now())")
    con.close()
    with pytest.raises(RuntimeError, match="schema version 99, newer than this Portcullis"):
        start(tmp_path, confdir, "--db", str(db))


def test_on_record_failure_allow_keeps_forwarding_and_catches_up(tmp_path, confdir, upstream):
    import resource

    gw = start(tmp_path, confdir, "--on-record-failure", "allow")
    assert gw.process is not None
    try:
        soft, hard = resource.prlimit(gw.process.pid, resource.RLIMIT_FSIZE)
        try:
            resource.prlimit(gw.process.pid, resource.RLIMIT_FSIZE, (1, hard))
            response = client(gw).get(upstream.url("/allowed-anyway"), timeout=10)
            assert response.status_code == 200
            gw.wait_for_output("may go unrecorded")
        finally:
            resource.prlimit(gw.process.pid, resource.RLIMIT_FSIZE, (soft, hard))
        # The rows waited in memory and are written once the disk takes them again.
        assert wait_for(gw.db, "SELECT decision FROM flows WHERE path = '/allowed-anyway'",
                        [("allowed",)]) == [("allowed",)]
    finally:
        gw.stop_soon()
