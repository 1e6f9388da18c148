"""The default setup (`portcullis run`, no recording flag) can be queried live from another DuckDB.

A real gateway is started the default way: no --db, no --lake, its data location moved
into a temporary directory with $PORTCULLIS_HOME (as an installed gateway's would be in
~/.portcullis). It records into the default local lake there; a separate Python process
with nothing but duckdb runs the one ATTACH the banner and `portcullis sql --attach`
print, while agents' requests flow, sees every flow exactly once, and cannot write.
`portcullis sql`, `portcullis export`, the review UI's flows/session/SQL pages and
`portcullis replay` work on that default too. An explicit --db keeps the single file.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway import settings
from gateway.cli import build_parser
from review_ui.reviewers import add_reviewer
from tests.support import cli_run
from tests.support.gateway import GatewayProcess, free_port
from tests.support.module_servers import module_upstream  # noqa: F401  (the module's upstream)
from tests.support.recording_reader import (
    NO_DELETES,
    analyst_result,
    poll,
    proxied_session,
    start_analyst,
    wait_seen,
)
from tests.support.review_login import sign_in
from tests.support.upstream import UpstreamServer

READER = "reader"


@pytest.fixture(scope="module")
def data_home() -> Iterator[Path]:
    """$PORTCULLIS_HOME: short, as the analyst socket beside the default --db must be."""
    home = Path(tempfile.mkdtemp(prefix="pc-dl-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def analyst_home(tmp_path_factory) -> Path:
    """The analyst's HOME: their DuckDB extension directory starts empty."""
    return tmp_path_factory.mktemp("analyst-home")


class DefaultGateway(GatewayProcess):
    """`portcullis run` without --db or --lake (GatewayProcess always passes --db)."""

    def __init__(self, rules: Path, confdir: Path, home: Path, extra: list[str]) -> None:
        super().__init__(rules, confdir, extra, {settings.HOME_ENV: str(home)})
        self.home = home

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway", "run", "--listen", f"127.0.0.1:{self.port}",
                "--rules", str(self.rules), "--confdir", str(self.confdir), *self.extra_args]

    @property
    def db(self) -> Path:
        return self.home / "portcullis.duckdb"  # where the default puts the journal and socket

    @property
    def lake(self) -> Path:
        return self.home / "portcullis.lake"


@pytest.fixture(scope="module")
def rig(data_home, confdir, upstream) -> Iterator[tuple[DefaultGateway, str, str, str]]:
    rules = data_home / "rules.yaml"
    rules.write_text(textwrap.dedent(NO_DELETES))
    reviewers = data_home / "reviewers.yaml"
    password, token = add_reviewer(reviewers, READER, ["auditors"])
    ui = f"127.0.0.1:{free_port()}"
    gw = DefaultGateway(rules, confdir, data_home, ["--ui", ui, "--reviewers", str(reviewers)]).start()
    yield gw, f"http://{ui}", password, token or ""
    gw.stop()


def portcullis(*args: str, home: Path, data_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), settings.HOME_ENV: str(data_home)}
    return cli_run.portcullis(*args, timeout=120, env=env)


def agents(gw: GatewayProcess, upstream: UpstreamServer, session: str, total: int,
           threads: int = 4, index_from: int = 0) -> list[tuple[str, float]]:
    """``total`` GETs through the gateway from ``threads`` agents: (flow id, answered at)."""
    done: list[tuple[str, float]] = []

    def agent() -> None:
        with proxied_session(gw) as http:
            for index in range(total // threads):
                response = http.get(upstream.url(f"/default/{index_from + index}"), timeout=30,
                                    headers={"X-Portcullis-Session": session})
                assert response.status_code == 200
                done.append((response.headers["X-Portcullis-Flow-Id"], time.time()))
                time.sleep(0.005)

    running = [threading.Thread(target=agent) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(120)
    return done


def test_the_default_run_records_into_the_local_lake_and_prints_the_attach(rig):
    gw, *_ = rig
    recording = gw.wait_for_output("recording:")
    assert f"lake {gw.lake}" in recording and str(gw.db) in recording, recording
    banner = gw.wait_for_output("analysts (own DuckDB")
    assert f"ATTACH 'ducklake:sqlite:{gw.lake}/catalog.sqlite' AS rec (READ_ONLY);" in banner
    assert (gw.lake / "catalog.sqlite").is_file()
    assert not gw.db.exists(), "with the lake as the default, no DuckDB file is created at --db"


def test_an_analyst_attaches_the_default_recording_live_with_one_statement(rig, upstream, analyst_home,
                                                                           data_home):
    gw, *_ = rig
    printed = portcullis("sql", "--attach", home=analyst_home, data_home=data_home)
    assert printed.returncode == 0, printed.stderr
    statement = printed.stdout.strip()
    assert statement == f"ATTACH 'ducklake:sqlite:{gw.lake}/catalog.sqlite' AS rec (READ_ONLY);"
    assert statement in gw.wait_for_output("analysts (own DuckDB")
    # 80 flows: the halves below make the analyst read while the gateway writes at any
    # size; more flows only lengthen the test (and the lag figures printed are not checked).
    session, total = f"dflt-{uuid.uuid4().hex[:8]}", 80
    # The analyst: plain duckdb and the printed ATTACH; samples (wall time, count, distinct,
    # query ms) as fast as it can until it has seen them all.
    analyst = start_analyst(statement, session, total, seconds=90, interval=0.01, live=True,
                            env={**os.environ, "HOME": str(analyst_home)}, cwd=analyst_home)
    # Half, then the rest once the analyst has counted the first half: it reads while the
    # gateway writes, whatever the machine's load.
    sent = agents(gw, upstream, session, total // 2)
    wait_seen(analyst, total // 2)
    sent += agents(gw, upstream, session, total - total // 2, index_from=total // 2)
    seen = analyst_result(analyst, timeout=120)
    samples = seen["samples"]
    counts = [count for _, count, _, _ in samples]
    # It read while the gateway wrote: the recording grew under it, never a flow twice.
    assert any(0 < count < total for count in counts), counts
    assert counts == sorted(counts)
    assert all(count == distinct for _, count, distinct, _ in samples)
    assert counts[-1] == total == len({flow for flow, _ in sent})
    assert seen["refused"] and "read-only" in seen["refused"].lower().replace("read only", "read-only")
    # From the k-th answer to the k-th row visible to the analyst.
    answered = sorted(at for _, at in sent)
    visible = [next(at for at, count, _, _ in samples if count >= k + 1) for k in range(total)]
    lag_ms = sorted(max(0.0, (v - a) * 1000) for v, a in zip(visible, answered, strict=True))
    query_ms = sorted(ms for *_, ms in samples)
    print(f"default lake, {total} flows from 4 agents: answer -> visible to the analyst "
          f"median {statistics.median(lag_ms):.0f} ms, p95 {lag_ms[int(len(lag_ms) * 0.95)]:.0f} ms; "
          f"analyst count query while writing median {statistics.median(query_ms):.1f} ms, "
          f"p95 {query_ms[int(len(query_ms) * 0.95)]:.1f} ms over {len(samples)} queries")
    # Printed for the reader, never asserted (project rule 6: timings belong in bench/).


def test_portcullis_sql_and_export_read_the_default_lake_without_flags(rig, upstream, analyst_home,
                                                                      data_home, tmp_path):
    gw, *_ = rig
    session = f"cli-{uuid.uuid4().hex[:8]}"
    sent = agents(gw, upstream, session, 4, threads=1)
    query = f"SELECT count(*) AS n FROM flows WHERE session_id = '{session}'"
    done = poll(lambda: portcullis("sql", "--format", "json", query, home=analyst_home, data_home=data_home),
                lambda done: done.returncode != 0 or json.loads(done.stdout) == [{"n": len(sent)}],
                interval=0.2)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"n": len(sent)}]
    refused = portcullis("sql", "DELETE FROM flows", home=analyst_home, data_home=data_home)
    assert refused.returncode == 1 and "read_only" in refused.stderr
    exported = portcullis("export", "--format", "jsonl", "--output", str(tmp_path / "out"),
                          home=analyst_home, data_home=data_home)
    assert exported.returncode == 0, exported.stderr
    lines = (tmp_path / "out" / "flows.jsonl").read_text().splitlines()
    assert {flow for flow, _ in sent} <= {json.loads(line)["id"] for line in lines}


def test_the_review_pages_and_replay_work_on_the_default_lake(rig, upstream, analyst_home, data_home):
    gw, ui, password, token = rig
    session = f"ui-{uuid.uuid4().hex[:8]}"
    ((flow, _),) = agents(gw, upstream, session, 1, threads=1)
    cookie, _ = sign_in(ui, READER, password)
    http = requests.Session()
    http.trust_env = False
    http.headers["Cookie"] = cookie
    page = poll(lambda: http.get(f"{ui}/audit/flows", timeout=10), lambda page: flow in page.text, interval=0.2)
    assert page.status_code == 200 and flow in page.text
    assert flow in http.get(f"{ui}/audit/session", params={"id": session}, timeout=10).text
    detail = http.get(f"{ui}/audit/flows/{flow}", timeout=10)
    assert detail.status_code == 200 and "/default/0" in detail.text
    sql = http.get(f"{ui}/audit/sql", params={"q": f"SELECT id FROM flows WHERE session_id = '{session}'"},
                   timeout=10)
    assert sql.status_code == 200 and flow in sql.text
    replayed = portcullis("replay", "--ui", ui, "--token", token, "--format", "json", flow,
                          home=analyst_home, data_home=data_home)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    result = json.loads(replayed.stdout.splitlines()[-1])
    assert result["decision"] == "allowed" and result["replay_of"] == flow, result


@pytest.mark.parametrize(("argv", "lake"), [
    ([], str(settings.DEFAULT_LAKE)),
    (["--db", str(settings.DEFAULT_DB)], None),  # given, even with the default path: a file
    (["--db", "/tmp/x.duckdb"], None),
    (["--db", ""], None),
    (["--lake", "/tmp/elsewhere.lake"], str(Path("/tmp/elsewhere.lake").resolve())),
])
def test_only_no_recording_flag_means_the_default_lake(argv, lake):
    options = settings.mitmproxy_options(build_parser().parse_args(["run", *argv]))
    assert options.get("portcullis_lake") == lake


def test_the_test_gateways_keep_their_explicit_duckdb_file(tmp_path):
    """The rest of the suite records into files: tests/support/gateway.py passes --db."""
    command = GatewayProcess(tmp_path / "rules.yaml", tmp_path).command
    assert command[command.index("--db") + 1].endswith(".duckdb")
    assert "--lake" not in command


def modes_under(root: Path) -> dict[str, int]:
    """Every file and directory under ``root`` (``root`` too) -> its permission bits.
    Symbolic links are left out: their own mode is always 0777 and means nothing (the
    extension directory links DuckDB's extensions from the installed wheels)."""
    found = {".": root.stat().st_mode & 0o777}
    for path in sorted(root.rglob("*")):
        if not path.is_symlink():
            found[str(path.relative_to(root))] = path.lstat().st_mode & 0o777
    return found


def not_private(modes: dict[str, int], root: Path) -> list[str]:
    wrong = []
    for name, mode in modes.items():
        path = root / name
        wanted = 0o700 if path.is_dir() else 0o600
        if mode != wanted:
            wrong.append(f"{name}: {mode:o}, wanted {wanted:o}")
    return wrong


def test_every_file_and_directory_of_the_default_lake_is_owner_only(confdir, upstream, tmp_path):
    """The catalog, its -wal/-shm, the data directory and its Parquet files: 0600/0700.

    A gateway of its own, started the default way under a fresh $PORTCULLIS_HOME with
    maintenance every second, so that inlined rows are flushed into Parquet files, and
    with umask 022, so that the modes are the code's doing, not the test runner's.
    """
    home = Path(tempfile.mkdtemp(prefix="pc-modes-"))
    try:
        rules = tmp_path / "rules.yaml"
        rules.write_text(textwrap.dedent(NO_DELETES))
        before = os.umask(0o022)  # the gateway inherits a permissive umask: modes are the code's
        try:
            gw = DefaultGateway(rules, confdir, home, ["--lake-maintenance", "1"]).start()
        finally:
            os.umask(before)
        try:
            agents(gw, upstream, f"modes-{uuid.uuid4().hex[:8]}", 20, threads=2)
            data = gw.lake / "data"
            parquet = poll(lambda: list(data.rglob("*.parquet")), bool, timeout=30, interval=0.2)
            assert parquet, "maintenance flushed no inlined rows into Parquet files"
            # SQLite's -wal/-shm exist while a connection has the catalog open: a look at a
            # moment they are there (checked below that it was found).
            running = poll(lambda: modes_under(home), lambda modes: any(
                name.startswith("portcullis.lake/catalog.sqlite-") for name in modes), timeout=10)
        finally:
            gw.stop()
        stopped = modes_under(home)
        names = set(running)
        # What the check covered: the lake's catalog (and SQLite's -wal/-shm while the
        # gateway ran), its data directory and files, and the gateway's own files beside.
        assert {"portcullis.lake", "portcullis.lake/catalog.sqlite", "portcullis.lake/data"} <= names
        assert any(name.startswith("portcullis.lake/catalog.sqlite-") for name in names), sorted(names)
        assert any(name.endswith(".parquet") for name in names)
        print(f"owner-only: {len(running)} paths while running, {len(stopped)} after stop: {sorted(names)}")
        assert not_private(running, home) == [] and not_private(stopped, home) == []
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_lake_left_readable_is_tightened_when_it_is_opened(tmp_path):
    """A lake another umask (or an older version) left group/world-readable."""
    from recordings.lake import Lake, prepare

    lake = Lake.parse(str(tmp_path / "loose.lake"))
    prepare(lake)
    catalog = Path(lake.catalog) / "catalog.sqlite"
    loose = {Path(lake.catalog): 0o755, Path(lake.data): 0o775, catalog: 0o644}
    for path, mode in loose.items():
        os.chmod(path, mode)
    prepare(lake)
    assert {path: path.stat().st_mode & 0o777 for path in loose} == {
        Path(lake.catalog): 0o700, Path(lake.data): 0o700, catalog: 0o600}
