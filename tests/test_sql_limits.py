"""Analysts' queries are bounded: time, memory, result size, and the client leaving.

Before: one ``string_agg`` took the gateway from 160 MB to 10 GB, and a query ran on after
its browser left. One real gateway (review UI on, a 3 s query timeout, a 256 MB DuckDB
memory limit) serves every test; queries go through the SQL page (a signed-in browser
session, plain HTTP), the analyst socket (what ``portcullis sql`` uses) and raw sockets
that hang up mid-query. While an analyst's query runs, agents' flows must still be
recorded promptly.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests

from bench.procs import usage
from recordings.control import RequestFailed, ask, socket_path
from tests.support.review import PASSWORD_SUFFIX, ReviewRig

TIMEOUT_S = 3  # the hang-up tests need 1 s + their 1.5 s margin below it
#: Burns one core for minutes and needs almost no memory.
SLOW = "SELECT count(*) FROM range(100000000000) t(i) WHERE hash(i) % 7 = 3"
#: One ~2 GB string: cannot spill, must hit the memory limit.
HUGE = "SELECT length(string_agg(repeat('x', 1000) || i::VARCHAR, ',')) FROM range(2000000) t(i)"
#: A big aggregate that holds as much memory as DuckDB lets it (and spills); ~8 s here.
#: (DuckDB 1.5 cannot spill string_agg's states: the 2.0-era query failed in 0.8 s.)
HEAVY = ("SELECT i % 2000000 AS k, count(*) AS n, max(repeat('y', 100) || i) AS s "
         "FROM range(30000000) t(i) GROUP BY k ORDER BY k")


@pytest.fixture(scope="module")
def rig(tmp_path_factory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("sql-limits"), confdir, extra_args=(
        "--sql-timeout", str(TIMEOUT_S), "--db-memory-limit", "256MB", "--db-threads", "1"))
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def cookie(rig: ReviewRig) -> str:
    """A signed-in reviewer's session cookie (sent by hand: it is Secure, the UI is http)."""
    login = rig.http.get(rig.ui_url + "/login", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    before = login.cookies.get("portcullis_session")
    response = rig.http.post(rig.ui_url + "/login", allow_redirects=False, timeout=10,
                             data={"name": "carol", "password": "carol" + PASSWORD_SUFFIX, "csrf_token": token},
                             headers={"Cookie": f"portcullis_session={before}"})
    assert response.status_code in (302, 303), response.text
    return f"portcullis_session={response.cookies['portcullis_session']}"


def sql_page(rig: ReviewRig, cookie: str, sql: str, timeout: float = 60) -> requests.Response:
    return rig.http.get(rig.ui_url + "/audit/sql", params={"q": sql}, headers={"Cookie": cookie},
                        timeout=timeout)


def stopped(rig: ReviewRig, code: str) -> int:
    """How many analyst queries the gateway has logged as stopped with ``code``."""
    return sum(f"analyst query stopped ({code})" in line for line in list(rig.gateway.lines))


def hang_up_during_a_slow_query(rig: ReviewRig, send: bytes, connect) -> None:
    """Start a slow query on a raw connection, hang up after a second, and expect the
    gateway to stop it at once (well before the query timeout would)."""
    before = stopped(rig, "query_cancelled")
    with connect() as sock:
        sock.sendall(send)
        time.sleep(1.0)  # the query is running now
    hung_up = time.monotonic()
    while stopped(rig, "query_cancelled") == before:
        assert time.monotonic() - hung_up < TIMEOUT_S - 1.5, "the query ran on after the client left"
        time.sleep(0.05)


def test_a_slow_query_is_stopped_at_the_timeout_and_the_error_names_it(rig, cookie):
    started = time.monotonic()
    with pytest.raises(RequestFailed) as refused:
        ask(rig.gateway.db, "/query", {"sql": SLOW})
    took = time.monotonic() - started
    assert refused.value.status == 408
    assert refused.value.body["error"] == "query_timeout"
    assert f"{TIMEOUT_S} s" in refused.value.body["message"] and "portcullis_sql_timeout" in refused.value.body["message"]
    assert TIMEOUT_S - 0.5 <= took < TIMEOUT_S + 5, took
    page = sql_page(rig, cookie, SLOW)
    assert page.status_code == 408
    assert "query_timeout" in page.text and "portcullis_sql_timeout" in page.text
    assert "id=\"sql-error\"" in page.text


def test_string_agg_hits_the_memory_limit_instead_of_growing_the_gateway(rig, cookie):
    before = usage(rig.gateway.process.pid).rss
    page = sql_page(rig, cookie, HUGE)
    assert page.status_code == 413, page.text[:500]
    assert "query_memory" in page.text and "portcullis_db_memory_limit" in page.text
    with pytest.raises(RequestFailed) as refused:
        ask(rig.gateway.db, "/query", {"sql": HUGE})
    assert refused.value.status == 413 and refused.value.body["error"] == "query_memory"
    grown = usage(rig.gateway.process.pid).peak_rss - before
    assert grown < 600 * 2**20, f"the gateway grew by {grown / 2**20:.0f} MiB"
    assert sql_page(rig, cookie, "SELECT 42 AS answer").status_code == 200  # still serving


def test_a_result_too_large_to_hold_is_refused_by_name(rig):
    with pytest.raises(RequestFailed) as refused:
        ask(rig.gateway.db, "/query", {"sql": "SELECT repeat('z', 100000) AS big FROM range(1000)"})
    assert refused.value.status == 413 and refused.value.body["error"] == "result_too_large"


def test_the_cli_leaving_stops_its_query(rig):
    body = json.dumps({"sql": SLOW}).encode()
    request = (b"POST /query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(socket_path(rig.gateway.db)))
        return sock

    hang_up_during_a_slow_query(rig, request, connect)


def test_the_browser_leaving_stops_its_query(rig, cookie):
    request = (f"GET /audit/sql?q={quote(SLOW)} HTTP/1.1\r\nHost: 127.0.0.1:{rig.ui_port}\r\n"
               f"Cookie: {cookie}\r\n\r\n").encode()
    hang_up_during_a_slow_query(rig, request, lambda: socket.create_connection(("127.0.0.1", rig.ui_port)))


def test_flows_are_recorded_promptly_while_an_analyst_runs_a_heavy_query(rig, cookie):
    """The data path first: every flow sent during a heavy query is in the recording
    within 2 s of its answer, and the agent's answers stay fast. How long one heavy query
    runs depends on the machine's load (it ended after 4 flows once), so when it ends
    another starts: the flows are counted that were sent and recorded while one ran."""
    pages: list[requests.Response] = []

    def start_heavy() -> threading.Thread:
        thread = threading.Thread(target=lambda: pages.append(sql_page(rig, cookie, HEAVY)))
        thread.start()
        time.sleep(0.5)  # the analyst's query is under way
        return thread

    heavy, started_queries = start_heavy(), 1
    http = requests.Session()
    http.trust_env = False
    http.proxies = rig.proxies("billing-agent")
    lags, latencies = [], []
    sent = during = 0
    while during < 8 and sent < 40:
        if not heavy.is_alive() and started_queries < 4:
            heavy, started_queries = start_heavy(), started_queries + 1
        started = time.monotonic()
        response = http.get(rig.upstream.url(f"/v1/items/{sent}"), timeout=10)
        latencies.append(time.monotonic() - started)
        assert response.status_code == 200
        flow_id = response.headers["X-Portcullis-Flow-Id"]
        answered = time.monotonic()
        while not ask(rig.gateway.db, "/query", {"sql": "SELECT count(*) FROM flows WHERE id = ?",
                                                 "params": [flow_id]})["rows"][0][0]:
            assert time.monotonic() - answered < 2.0, f"flow {sent} not recorded within 2 s"
            time.sleep(0.05)
        lags.append(time.monotonic() - answered)
        during += heavy.is_alive()  # sent and recorded while a heavy query ran
        sent += 1
        time.sleep(0.1)
    heavy.join(30)
    assert during >= 5, f"only {during} of {sent} flows overlapped a heavy query"
    for page in pages:
        assert page.status_code in (200, 408, 413), page.status_code
    assert max(latencies) < 2.0, latencies
    assert max(lags) < 2.0, lags
