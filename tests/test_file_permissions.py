"""Recording files are private to the gateway's user: database, WAL, spill and exports.

The recording holds every request and response body. With the usual umask (022) DuckDB
created the database, its ``.wal`` and exports 0644: any local user (in the netns
example, the agent's own user) could read them. The store now creates them under umask
077 and tightens files left by older versions when it opens them. These tests run a
real gateway under umask 022 and stat what it wrote.
"""

from __future__ import annotations

import os
import stat
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import requests

from recordings.control import ask
from recordings.store import Store
from tests.support import cli_run
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

RULES = """
    version: 1
    default: allow
    rules: []
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """Start gateways (they inherit it) under the common 022 umask."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


def send(gateway: GatewayProcess, upstream: UpstreamServer, count: int) -> None:
    http = requests.Session()
    http.trust_env = False
    http.proxies = {"http": gateway.proxy_url}
    for index in range(count):
        assert http.get(upstream.url(f"/v1/items/{index}"), timeout=10).ok


def wait_recorded(db: Path, count: int) -> None:
    deadline = time.monotonic() + 10
    while ask(db, "/query", {"sql": "SELECT count(*) FROM flows"})["rows"][0][0] < count:
        assert time.monotonic() < deadline, "flows were not recorded"
        time.sleep(0.1)


def test_database_wal_exports_and_new_directories_are_owner_only(tmp_path, confdir, upstream, usual_umask):
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(RULES))
    db = tmp_path / "new" / "recordings" / "gateway.duckdb"
    gateway = GatewayProcess(tmp_path / "rules.yaml", confdir, ["--db", str(db)]).start()
    try:
        send(gateway, upstream, 5)
        wait_recorded(db, 5)
        wal = db.parent / f"{db.name}.wal"
        assert wal.exists(), "the WAL should hold the uncheckpointed rows"
        assert mode(db) == 0o600
        assert mode(wal) == 0o600
        assert mode(db.parent) == 0o700 and mode(db.parent.parent) == 0o700
        exported = tmp_path / "export"
        result = cli_run.portcullis("export", "--db", str(db), "--output", str(exported))
        assert result.returncode == 0, result.stderr
        assert mode(exported) == 0o700
        for name in ("flows.parquet", "events.parquet"):
            assert mode(exported / name) == 0o600, name
        parquet = tmp_path / "result.parquet"
        ask(db, "/query", {"sql": "FROM flows", "output": str(parquet)})
        assert mode(parquet) == 0o600
    finally:
        gateway.stop()


def test_export_from_a_stopped_gateway_is_owner_only(tmp_path, usual_umask):
    """Without a gateway the CLI opens the file itself: its exports are private too."""
    db = tmp_path / "offline.duckdb"
    Store(db).close()
    out = tmp_path / "offline-export"
    result = cli_run.portcullis("export", "--db", str(db), "--format", "jsonl", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert mode(out / "flows.jsonl") == 0o600 and mode(out / "events.jsonl") == 0o600


def test_files_left_readable_by_an_older_version_are_tightened_at_open(tmp_path, usual_umask):
    db = tmp_path / "old.duckdb"
    with duckdb.connect(str(db)) as con:  # an old recording: created under umask 022
        con.execute("CREATE TABLE scratch (x INT)")
    wal = tmp_path / "old.duckdb.wal"
    wal.write_bytes(b"")
    os.chmod(db, 0o644)
    os.chmod(wal, 0o644)
    staging = tmp_path / "old.duckdb.out"
    staging.mkdir(mode=0o755)
    os.chmod(staging, 0o755)
    store = Store(db)
    try:
        assert mode(db) == 0o600
        assert mode(staging) == 0o700
        assert not wal.exists() or mode(wal) == 0o600
    finally:
        store.close()
    assert os.umask(0o022) == 0o022, "closing the last store gives the process its umask back"
