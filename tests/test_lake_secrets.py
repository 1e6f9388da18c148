"""The lake catalog's password is not one SELECT away for analysts (issue 18).

DuckDB shows an attached database's path to any query (``duckdb_databases()``, and in
``duckdb_settings()`` as part of ``allowed_paths``); the SQL page, ``portcullis sql`` and
the analyst socket run analysts' SELECTs on the gateway's own DuckDB. A
``postgresql://user:password@...`` lake URL put the password there. A PostgreSQL server
of this test's own that demands passwords (scram-sha-256) shows that the gateway still
connects, with the password moved into a private libpq password file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from recordings.lake import Lake, PassFile
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
        passfile = store.passfile.path
        assert passfile is not None and passfile.stat().st_mode & 0o777 == 0o600
        if str(passfile).startswith("/proc/self/fd/"):  # Linux: a file with no name
            assert passfile.stat().st_nlink == 0
            # At rest nowhere: a SIGKILLed recording process runs no cleanup, and the named
            # file in /tmp it used to write kept the password there.
            escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
            assert passfile.read_text() == f"*:*:*:*:{escaped}\n"
            assert not _files_holding(escaped, Path(tempfile.gettempdir()))
        else:
            assert passfile.parent.stat().st_mode & 0o777 == 0o700
        shown = ""
        for sql in ("SELECT * FROM duckdb_databases()", "SELECT name, value FROM duckdb_settings()",
                    "SELECT * FROM duckdb_secrets()"):
            shown += repr(store.query(sql)[1])
        assert "lakeuser@127.0.0.1" in shown  # the catalog is there, without its password
        for form in (PASSWORD, quote(PASSWORD, safe=""), "s3cr"):
            assert form not in shown
        with pytest.raises(Exception, match="disabled by configuration"):
            store.query(f"SELECT * FROM read_text('{passfile}')")  # confined: not readable by SQL
        inode = passfile.stat().st_ino
    finally:
        store.close()
    assert not passfile.exists() or passfile.stat().st_ino != inode  # an fd number may be reused


def _files_holding(text: str, root: Path) -> list[Path]:
    """Files under ``root`` (this user's, not too large) whose bytes contain ``text``."""
    found, needle = [], text.encode()
    # os.walk, not Path.rglob: other tests create and remove directories under /tmp while
    # this walks, and rglob raised FileNotFoundError for one that vanished (2026-12-04).
    for directory, _, names in os.walk(root, onerror=lambda _: None):
        for name in names:
            path = Path(directory, name)
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20 \
                        and needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue  # another test's file, gone or unreadable
    return found


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="O_TMPFILE is Linux's")
def test_the_password_file_has_no_name_on_linux(tmp_path: Path) -> None:
    passfile = PassFile(tmp_path / "private")
    path = passfile.write("*:*:*:*:hunter2\n")
    fd = int(path.name)
    assert path.read_text() == "*:*:*:*:hunter2\n" and path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_nlink == 0 and _files_holding("hunter2", tmp_path) == []
    passfile.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: the file is gone with its last descriptor


def test_without_o_tmpfile_it_is_a_private_named_file_removed_on_close(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    passfile = PassFile(tmp_path / "private")
    path = passfile.write("*:*:*:*:hunter2\n")
    assert path == tmp_path / "private" / "pgpass"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert _files_holding("hunter2", tmp_path) == [path]  # what the unnamed file avoids
    passfile.close()
    assert not path.parent.exists()
