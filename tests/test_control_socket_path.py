"""The analyst socket works when ``<db>.sock`` would exceed AF_UNIX's 107 bytes.

A long HOME or confdir used to make the gateway fail to serve ``portcullis sql``; the
socket now falls back to a short per-user path derived from the database's path, which
the client side (:func:`recordings.control.socket_path`) finds the same way.
"""

from __future__ import annotations

import stat
from pathlib import Path

from recordings.control import MAX_SOCKET_PATH, ControlServer, call, socket_path


def long_db(tmp_path: Path) -> Path:
    confdir = tmp_path / ("c" * max(1, 150 - len(str(tmp_path)) - 1))
    assert len(str(confdir)) >= 150
    confdir.mkdir()
    return confdir / "portcullis.duckdb"


def test_long_confdir_still_serves_the_analyst_socket(tmp_path):
    db = long_db(tmp_path)
    path = socket_path(db)
    assert len(str(path)) <= MAX_SOCKET_PATH
    server = ControlServer(path, None, lambda: {"db": str(db)}).start()  # type: ignore[arg-type]
    try:
        assert call(socket_path(db), "/health") == {"ok": True, "db": str(db)}
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        server.stop()


def test_fallback_is_stable_and_distinct_per_database(tmp_path):
    db = long_db(tmp_path)
    assert socket_path(db) == socket_path(str(db))
    assert socket_path(db) != socket_path(db.with_name("other.duckdb"))


def test_short_paths_keep_the_sock_next_to_the_database(tmp_path):
    db = tmp_path / "p.duckdb"
    if len(f"{db}.sock") <= MAX_SOCKET_PATH:
        assert socket_path(db) == Path(f"{db}.sock")
