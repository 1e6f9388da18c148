"""The lake catalog's password is not one SELECT away for analysts (issue 18).

DuckDB shows an attached database's path to any query (``duckdb_databases()``, and in
``duckdb_settings()`` as part of ``allowed_paths``); the SQL page, ``portcullis sql`` and
the analyst socket run analysts' SELECTs on the gateway's own DuckDB. A
``postgresql://user:password@...`` lake URL put the password there. A PostgreSQL server
of this test's own that demands passwords (scram-sha-256) shows that the gateway still
connects, with the password moved into a private libpq password file.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from recordings.lake import Lake
from recordings.store import Store, StoreError
from tests.support.postgres import PostgresServer, find_bindir

PASSWORD = "s3cr:et\\pw"  # a colon and a backslash: escaped in the password file


@pytest.fixture(scope="module")
def strict_postgres() -> Iterator[PostgresServer]:
    """A server of its own (the session's trusts everyone): passwords required."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries")
    server = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="portcullis-pg-"))).init().start()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as pg:
            pg.execute("CREATE ROLE lakeuser LOGIN PASSWORD %s".replace("%s", "'" + PASSWORD.replace("'", "''") + "'"))
            pg.execute("CREATE DATABASE lake OWNER lakeuser")
        hba = server.data / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n")
        server._run("pg_ctl", "-D", str(server.data), "reload")
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


def test_the_catalog_password_is_used_but_not_shown_to_analysts(strict_postgres, tmp_path):
    from urllib.parse import quote

    url = f"postgresql://lakeuser:{quote(PASSWORD, safe='')}@127.0.0.1:{strict_postgres.port}/lake"
    with pytest.raises(StoreError, match="password authentication failed|no password"):
        Store(tmp_path / "wrong.duckdb", lake=Lake.parse(url.replace(quote(PASSWORD, safe=""), "wrong"),
                                                          str(tmp_path / "data")))
    store = Store(tmp_path / "gw.duckdb", lake=Lake.parse(url, str(tmp_path / "data")))
    try:
        cur = store.cursor()
        store.insert(cur, [{"id": "f1", "decision": "allowed", "rules": []}], [])
        cur.close()
        assert store.query("SELECT id FROM flows")[1] == [("f1",)]
        passfile = store.passfile
        assert passfile.stat().st_mode & 0o777 == 0o600 and passfile.parent.stat().st_mode & 0o777 == 0o700
        shown = ""
        for sql in ("SELECT * FROM duckdb_databases()", "SELECT name, value FROM duckdb_settings()",
                    "SELECT * FROM duckdb_secrets()"):
            shown += repr(store.query(sql)[1])
        assert "lakeuser@127.0.0.1" in shown  # the catalog is there, without its password
        for form in (PASSWORD, quote(PASSWORD, safe=""), "s3cr"):
            assert form not in shown
        with pytest.raises(Exception, match="disabled by configuration"):
            store.query(f"SELECT * FROM read_text('{passfile}')")  # confined: not readable by SQL
    finally:
        store.close()
    assert not passfile.exists()
