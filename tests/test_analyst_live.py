"""An analyst's own DuckDB process reads the live recording while the gateway writes it.

A real gateway records into a local lake (``--lake DIR``: SQLite catalog, no server);
a separate Python process with nothing but the duckdb module runs the documented setup
(``portcullis sql --attach`` prints the statement and links the extensions) and the one
``ATTACH`` while requests flow, sees the rows arrive, each flow once, and cannot write.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recordings.control import ask
from tests.support import cli_run
from tests.support.gateway import GatewayProcess
from tests.support.module_servers import module_upstream  # noqa: F401  (the module's upstream)
from tests.support.recording_reader import (
    NO_DELETES,
    analyst_result,
    proxied_session,
    start_analyst,
    wait_seen,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The analyst's HOME: their DuckDB extension directory starts empty."""
    return tmp_path_factory.mktemp("analyst-home")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir, upstream) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("live")
    rules = tmp / "rules.yaml"
    rules.write_text(textwrap.dedent(NO_DELETES))
    gw = GatewayProcess(rules, confdir, ["--lake", str(tmp / "recording.lake")]).start()
    yield gw
    gw.stop()


def portcullis(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return cli_run.portcullis(*args, timeout=120, env={**os.environ, "HOME": str(home)})


def test_an_analyst_process_attaches_the_live_lake_with_one_statement(gateway, upstream, home):
    lake = gateway.extra_args[gateway.extra_args.index("--lake") + 1]
    printed = portcullis("sql", "--attach", "--lake", lake, home=home)
    assert printed.returncode == 0, printed.stderr
    statement = printed.stdout.strip()
    assert statement == f"ATTACH 'ducklake:sqlite:{lake}/catalog.sqlite' AS rec (READ_ONLY);"
    session, total = f"live-{uuid.uuid4().hex[:8]}", 240
    # The analyst: a plain duckdb, the printed ATTACH, a count every 50 ms until all are there.
    analyst = start_analyst(statement, session, total, view="decisions_per_identity_per_day",
                            env={**os.environ, "HOME": str(home)}, cwd=home, live=True)
    sent: list[str] = []

    def agent(first: int, count: int) -> None:
        with proxied_session(gateway) as http:
            for index in range(first, first + count):
                response = http.get(upstream.url(f"/live/{index}"), timeout=30,
                                    headers={"X-Portcullis-Session": session})
                assert response.status_code == 200
                sent.append(response.headers["X-Portcullis-Flow-Id"])

    # Half, then the rest once the analyst has counted the first half (at any load).
    for half in (0, 1):
        agents = [threading.Thread(target=agent, args=(half * total // 2 + i * total // 8, total // 8))
                  for i in range(4)]
        for thread in agents:
            thread.start()
        for thread in agents:
            thread.join(120)
        if half == 0:
            wait_seen(analyst, total // 2)
    seen = analyst_result(analyst, timeout=60)
    counts = [count for _, count, _, _ in seen["samples"]]
    # It read while the gateway wrote: it saw the recording grow, never a flow twice.
    assert any(0 < count < total for count in counts), counts
    assert counts == sorted(counts)
    assert all(count == distinct for _, count, distinct, _ in seen["samples"])
    assert counts[-1] == total == len(set(sent))
    assert seen["refused"] and "read-only" in seen["refused"].lower().replace("read only", "read-only")
    assert seen["views"] > 0
    # The gateway's own readers (portcullis sql through the socket) see the same rows.
    rows = ask(gateway.db, "/query", {"sql": "SELECT id FROM flows WHERE session_id = ?", "params": [session]})
    assert {row[0] for row in rows["rows"]} == set(sent)


def test_portcullis_sql_reads_the_lake_in_its_own_process(gateway, home):
    lake = gateway.extra_args[gateway.extra_args.index("--lake") + 1]
    done = portcullis("sql", "--lake", lake, "--format", "json",
                      "SELECT count(*) AS n FROM flows WHERE decision = 'allowed'", home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["n"] >= 240
    refused = portcullis("sql", "--lake", lake, "DELETE FROM flows", home=home)
    assert refused.returncode == 1 and "read_only" in refused.stderr


def test_a_duckdb_file_cannot_be_attached_and_the_command_says_so(home, tmp_path):
    done = portcullis("sql", "--attach", "--db", str(tmp_path / "x.duckdb"), home=home)
    assert done.returncode == 2 and "--lake" in done.stderr


def test_the_recording_process_keeps_its_share_of_the_gateway_small(gateway, upstream):
    """The rows are built and written by the recording process, not the gateway's."""
    health = ask(gateway.db, "/query", {"sql": "SELECT 1"})  # reachable
    assert health["rows"] == [[1]]
    from recordings.control import call, socket_path

    status = call(socket_path(gateway.db), "/health")
    assert status["sink_pid"] != gateway.process.pid
    assert status["rows_written"] > 0 and status["sink_cpu_s"] > 0
    time.sleep(0)  # the numbers are measured by bench/recording.py
