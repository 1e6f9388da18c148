"""`portcullis run --workers N`: two real gateway worker processes on one proxy address.

One supervisor with two workers for the whole module (tests/support/gateway.py starts it
as an operator would). Which worker answered a connection is read from the kernel: the
worker whose /proc/<pid>/fd holds the server side of that TCP connection.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway import workers
from recordings.lake import Lake
from review_ui.reviewers import add_reviewer
from tests.support.gateway import GatewayProcess, free_port
from tests.support.module_servers import module_upstream  # noqa: F401  (the module's upstream)
from tests.support.recording_reader import lake_reader, poll, proxied_session
from tests.support.upstream import UpstreamServer

RULES = """\
version: 1
default: allow
rules:
  - name: no-admin
    match: {path: "/admin/**"}
    action: block
"""
HOLDING = """\
  - name: hold-refunds
    match: {method: POST, path: /refunds}
    action: hold
"""
RULES += HOLDING
RELOADED = RULES + """\
  - name: no-reports
    match: {path: "/reports/**"}
    action: block
"""

def worker_pids(gateway: GatewayProcess) -> list[int]:
    line = gateway.wait_for_output("workers:")
    return [int(p) for p in line.split("pids ", 1)[1].split(")", 1)[0].split(", ")]


def _inode_of(local_port: int, remote_port: int) -> str | None:
    """The inode of the TCP socket 127.0.0.1:local_port <-> 127.0.0.1:remote_port."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if (fields[1], fields[2]) == want:
                return fields[9]
    return None


def serving_pid(candidates: list[int], local_port: int, remote_port: int) -> int | None:
    """Which of ``candidates`` holds the socket bound to local_port, connected to remote_port."""
    inode = _inode_of(local_port, remote_port)
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def listening_pids(candidates: list[int], port: int) -> set[int]:
    inodes = set()
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    found = set()
    for pid in candidates:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    found.add(pid)
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir: Path, postgres_dsn: str) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("workers")
    rules = directory / "rules.yaml"
    rules.write_text(RULES)
    reviewers = directory / "reviewers.yaml"
    _, token = add_reviewer(reviewers, "wanda", [], "wanda-password-1")
    ui_port = free_port()
    gateway = GatewayProcess(rules, confdir, ["--workers", "2", "--state", postgres_dsn,
                                              "--lake", str(directory / "lake"), "--db", str(directory / "gw.duckdb"),
                                              "--ui", f"127.0.0.1:{ui_port}", "--reviewers", str(reviewers)])
    gateway.lake = directory / "lake"  # type: ignore[attr-defined]
    gateway.ui_port, gateway.token = ui_port, token  # type: ignore[attr-defined]
    gateway.start(timeout=60)
    yield gateway
    gateway.stop()


def _connections(gateway: GatewayProcess, count: int) -> list[http.client.HTTPConnection]:
    connections = []
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.connect()
        connections.append(connection)
    return connections


def _get(connection: http.client.HTTPConnection, url: str) -> tuple[int, bytes]:
    connection.request("GET", url)
    response = connection.getresponse()
    return response.status, response.read()


def test_both_workers_serve_the_one_address(rig: GatewayProcess, upstream: UpstreamServer) -> None:
    pids = worker_pids(rig)
    assert len(set(pids)) == 2
    by_pid: dict[int, int] = {}
    connections = _connections(rig, 24)
    try:
        for connection in connections:
            status, _ = _get(connection, upstream.url("/hello"))
            assert status == 200
            pid = serving_pid(pids, rig.port, connection.sock.getsockname()[1])
            assert pid in pids
            by_pid[pid] = by_pid.get(pid, 0) + 1
            assert _get(connection, upstream.url("/admin/x"))[0] == 403  # the rules, in each
    finally:
        for connection in connections:
            connection.close()
    # The kernel spreads connections by a hash: 24 on one worker has odds of 2**-23.
    assert set(by_pid) == set(pids), by_pid


def test_both_workers_record_into_the_one_lake_each_flow_once(rig: GatewayProcess,
                                                               upstream: UpstreamServer) -> None:
    pids = worker_pids(rig)
    seen: dict[str, int] = {}
    connections = _connections(rig, 16)
    try:
        for connection in connections:
            for _ in range(3):
                connection.request("GET", upstream.url("/recorded"))
                response = connection.getresponse()
                response.read()
                seen[response.getheader("X-Portcullis-Flow-Id")] = serving_pid(
                    pids, rig.port, connection.sock.getsockname()[1])
    finally:
        for connection in connections:
            connection.close()
    assert set(seen.values()) == set(pids)  # both workers wrote some of them
    # Each worker keeps its own journal and analyst socket beside its own --db path.
    assert rig.db.with_name("gw.worker1.duckdb.sock").exists() and Path(f"{rig.db}.sock").exists()
    lake = Lake.parse(str(rig.lake))  # type: ignore[attr-defined]

    # An analyst's own DuckDB, read-only, with the pinned extension wheels (offline): one
    # attach, whose every query reads the lake's latest snapshot (as a live analyst's does).
    with lake_reader(lake, rig.lake) as con:  # type: ignore[attr-defined]
        def recorded() -> dict[str, int]:
            return dict(con.execute("SELECT id, count(*) FROM flows WHERE path = '/recorded' GROUP BY id").fetchall())

        counts = poll(recorded, lambda counts: set(counts) >= set(seen), timeout=20, interval=0.1)
    assert set(counts) == set(seen) and set(counts.values()) == {1}, (len(counts), len(seen))


def test_the_review_ui_is_bound_once_and_guarded_by_every_worker(rig: GatewayProcess,
                                                                 upstream: UpstreamServer) -> None:
    pids = worker_pids(rig)
    ui_port = rig.ui_port  # type: ignore[attr-defined]
    assert listening_pids(pids, ui_port) == {pids[0]}
    assert listening_pids(pids, rig.port) == set(pids)
    assert requests.get(f"http://127.0.0.1:{ui_port}/login", timeout=10).status_code == 200
    refused_by: set[int] = set()
    connections = _connections(rig, 24)
    try:
        for connection in connections:
            status, body = _get(connection, f"http://127.0.0.1:{ui_port}/api/pending")
            assert status == 403 and b"review_ui_unreachable" in body, body
            refused_by.add(serving_pid(pids, rig.port, connection.sock.getsockname()[1]))
    finally:
        for connection in connections:
            connection.close()
    assert refused_by == set(pids)


def test_a_hold_in_either_worker_is_decided_through_worker_0s_review_ui(rig: GatewayProcess,
                                                                         upstream: UpstreamServer) -> None:
    """The shared state (--state) is what makes this work: the UI lives in worker 0 only."""
    pids = worker_pids(rig)
    api = f"http://127.0.0.1:{rig.ui_port}/api"  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {rig.token}"}  # type: ignore[attr-defined]
    for pid in pids:
        connection = _connection_served_by(rig, pids, pid)
        held: dict[str, Any] = {}

        def send(connection: http.client.HTTPConnection = connection, held: dict[str, Any] = held) -> None:
            connection.request("POST", upstream.url("/refunds"), body=b'{"amount": 5}',
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            held["status"], held["body"] = response.status, response.read()

        waiter = threading.Thread(target=send)
        waiter.start()
        deadline, pending = time.monotonic() + 15, []
        while not pending and time.monotonic() < deadline:
            pending = requests.get(f"{api}/pending", headers=headers, timeout=10).json()["pending"]
            time.sleep(0.05)
        assert len(pending) == 1, pending
        answer = requests.post(f"{api}/flows/{pending[0]['flow_id']}/approve", headers=headers,
                               json={"comment": "ok"}, timeout=10)
        assert answer.status_code == 200, answer.text
        waiter.join(15)
        connection.close()
        assert held.get("status") == 200, (pid, held)


def _connection_served_by(gateway: GatewayProcess, pids: list[int], pid: int) -> http.client.HTTPConnection:
    """A keep-alive connection to the proxy that worker ``pid`` accepted."""
    for _ in range(200):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
        connection.connect()
        for _ in range(50):  # accepted by the kernel first, by the worker's loop a moment later
            owner = serving_pid(pids, gateway.port, connection.sock.getsockname()[1])
            if owner is not None:
                break
            time.sleep(0.01)
        if owner == pid:
            return connection
        connection.close()
    raise AssertionError(f"no connection reached worker {pid}")


def test_a_rules_edit_reloads_in_every_worker(rig: GatewayProcess, upstream: UpstreamServer) -> None:
    pids = worker_pids(rig)
    connections = _connections(rig, 24)
    try:
        assert all(_get(c, upstream.url("/reports/q1"))[0] == 200 for c in connections)
        rig.rules.write_text(RELOADED)
        blocked_by: set[int] = set()
        deadline = time.monotonic() + 15
        pending = list(connections)
        while pending and time.monotonic() < deadline:
            for connection in list(pending):
                if _get(connection, upstream.url("/reports/q1"))[0] == 403:
                    blocked_by.add(serving_pid(pids, rig.port, connection.sock.getsockname()[1]))
                    pending.remove(connection)
            time.sleep(0.1)
        assert not pending, "some connections still see the old rules"
        assert blocked_by == set(pids)
    finally:
        rig.rules.write_text(RULES)
        for connection in connections:
            connection.close()


def test_a_worker_that_dies_is_restarted_and_the_address_keeps_serving(rig: GatewayProcess,
                                                                       upstream: UpstreamServer) -> None:
    pids = worker_pids(rig)
    os.kill(pids[1], signal.SIGKILL)
    line = rig.wait_for_output("worker 1 (pid", timeout=10)
    assert "restarting" in line
    # Meanwhile every new connection is served (the kernel left the dead socket out).
    for _ in range(20):
        assert requests.get(upstream.url("/hello"), proxies={"http": rig.proxy_url}, timeout=10).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(listening_pids(_children(rig), rig.port)) < 2:
        time.sleep(0.1)
    assert len(listening_pids(_children(rig), rig.port)) == 2


def _children(gateway: GatewayProcess) -> list[int]:
    assert gateway.process is not None
    found = subprocess.run(["pgrep", "-P", str(gateway.process.pid)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_sigterm_stops_every_worker_cleanly(rig: GatewayProcess, upstream: UpstreamServer) -> None:
    """The module's last use of the rig: it is stopped here."""
    pids = _children(rig)
    assert len(pids) == 2
    session = proxied_session(rig)
    assert session.get(upstream.url("/hello"), timeout=10).status_code == 200  # a kept-alive connection
    assert rig.stop(signal.SIGTERM) == 0
    for pid in pids:  # the supervisor waited for (reaped) each worker before it exited
        assert not os.path.exists(f"/proc/{pid}")
    assert "Traceback" not in rig.output, rig.output
    assert "2 workers stopped" in rig.output
    with socket.socket() as sock:  # the address is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", rig.port))


def test_workers_need_shared_state(tmp_path: Path, confdir: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--workers", "2", "--rules", str(rules), "--confdir",
         str(confdir), "--listen", f"127.0.0.1:{free_port()}", "--db", ""],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--workers 2 needs shared state" in done.stderr and "--state" in done.stderr
    # And one DuckDB file cannot take several writers, whatever the state.
    assert "one DuckDB file" in workers.shared_state_problem(
        {"portcullis_state": "postgresql://x@127.0.0.1/db", "portcullis_db": "/tmp/x.duckdb"}, 2)
    assert workers.shared_state_problem({"portcullis_state": "postgresql://x@h/db", "portcullis_db": ""}, 2) is None
    assert workers.shared_state_problem({}, 1) is None
    # 'memory' (the default) is one process's state, not shared.
    assert "needs shared state" in workers.shared_state_problem({"portcullis_state": "memory", "portcullis_db": ""}, 2)


def test_workers_flag_values() -> None:
    assert workers.parse_workers("auto") == workers.available_cores() >= 1
    assert workers.parse_workers("3") == 3
    for bad in ("0", "-1", "many", str(workers.MAX_WORKERS + 1)):
        with pytest.raises(Exception, match="number of workers"):
            workers.parse_workers(bad)
