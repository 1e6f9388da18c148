"""The session's real PostgreSQL server: it answers, and it survives a stop and restart."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.postgres import PostgresServer


def test_server_answers_and_is_15_or_newer(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as connection:
        version = connection.execute("SHOW server_version_num").fetchone()[0]
    assert int(version) >= 150000


def test_stop_refuses_then_restart_serves(postgres: PostgresServer) -> None:
    postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres.dsn, connect_timeout=2)
    postgres.start()
    with psycopg.connect(postgres.dsn) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
