"""The shared-state schema in PostgreSQL, and the migrations that create and upgrade it.

Versioned like the recording's (recordings/schema.py): ``portcullis_schema`` holds the
version; connecting applies every migration not seen yet, in one transaction, under
an advisory lock so that two gateways starting together do not both migrate; a
database written by a newer Portcullis is refused rather than guessed at.

``rev`` columns take numbers from one sequence on every write: a gateway that polls
(or was woken by ``NOTIFY portcullis_state``) asks for rows with ``rev`` above the last
it saw, so a missed notification costs one poll interval, never a lost change.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterator

from addons.holds.pgdriver import psycopg

#: The channel every write notifies; payloads are the writer's gateway id (tiny, far
#: under PostgreSQL's 8,000-byte cap), since listeners re-read by ``rev`` anyway.
CHANNEL = "portcullis_state"
#: Held while migrating, so concurrent starts migrate once.
MIGRATION_LOCK = 0x706F7274  # "port"

#: (version, statements). Never edit a released migration: append a new one.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        "CREATE SEQUENCE portcullis_rev",
        """
        CREATE TABLE portcullis_holds (
            id TEXT PRIMARY KEY,
            gateway TEXT NOT NULL,            -- the gateway that took the hold (holds a wait-mode connection)
            mode TEXT NOT NULL,               -- wait | async
            identity TEXT NOT NULL,
            decision TEXT,                    -- NULL while pending
            collected BOOLEAN NOT NULL DEFAULT false,
            created DOUBLE PRECISION NOT NULL,
            deadline DOUBLE PRECISION NOT NULL,
            decided_at DOUBLE PRECISION,
            record JSONB NOT NULL,            -- the HoldRecord, field by field (addons.holds.pgcodec)
            writer TEXT NOT NULL,             -- the gateway that wrote this version (it skips its own)
            rev BIGINT NOT NULL DEFAULT nextval('portcullis_rev'),
            committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        "CREATE INDEX portcullis_holds_rev ON portcullis_holds (rev)",
        "CREATE INDEX portcullis_holds_pending ON portcullis_holds (deadline) WHERE decision IS NULL",
        """
        CREATE TABLE portcullis_grants (
            id TEXT PRIMARY KEY,
            flow_id TEXT NOT NULL,
            record JSONB NOT NULL,            -- the Grant (uses included)
            expires_at DOUBLE PRECISION NOT NULL,
            removed BOOLEAN NOT NULL DEFAULT false,
            writer TEXT NOT NULL,
            rev BIGINT NOT NULL DEFAULT nextval('portcullis_rev')
        )
        """,
        "CREATE INDEX portcullis_grants_rev ON portcullis_grants (rev)",
        """
        CREATE TABLE portcullis_hold_events (
            seq BIGSERIAL PRIMARY KEY,
            hold_id TEXT NOT NULL,
            gateway TEXT NOT NULL,
            event JSONB NOT NULL              -- kind, at, actor, detail
        )
        """,
        "CREATE INDEX portcullis_hold_events_hold ON portcullis_hold_events (hold_id, seq)",
        """
        CREATE TABLE portcullis_gateways (
            id TEXT PRIMARY KEY,
            started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            state TEXT NOT NULL DEFAULT 'up'  -- up | stopped | lost
        )
        """,
        """
        CREATE TABLE portcullis_sessions (
            id TEXT PRIMARY KEY,
            reviewer TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            credential TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX portcullis_sessions_reviewer ON portcullis_sessions (reviewer)",
        """
        CREATE TABLE portcullis_login_failures (
            key TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        )
        """,
        "CREATE INDEX portcullis_login_failures_key ON portcullis_login_failures (key, at)",
        """
        CREATE TABLE portcullis_secrets (
            name TEXT PRIMARY KEY,
            value BYTEA NOT NULL
        )
        """,
    ]),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer Portcullis."""


def connect(dsn: str, *, autocommit: bool = False, timeout: float = 3.0, role: str = "") -> psycopg.Connection:
    """A connection with a short connect timeout (a down server must fail fast), named in
    pg_stat_activity ``portcullis`` or ``portcullis <role>`` (a gateway's writer and sync
    threads name themselves and their gateway, so an operator can tell its sessions apart)."""
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=max(1, int(timeout)),
                           application_name=f"portcullis {role}".strip()[:63])


class Pool:
    """A few reusable connections for threads that may block (UI requests, sessions).

    Not for the event loop. An idle connection is checked (one round trip) before it is
    handed out, and one that raised is dropped, so the first call after a PostgreSQL
    restart reconnects instead of failing on a dead socket.
    """

    def __init__(self, dsn: str, idle_max: int = 4) -> None:
        self.dsn, self.idle_max = dsn, idle_max
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                conn.execute("SELECT 1")  # a server restart leaves idle connections dead
            except psycopg.Error:
                conn.close()
                conn = None
        if conn is None or conn.closed:
            conn = connect(self.dsn, autocommit=True)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < self.idle_max:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def migrate(connection: psycopg.Connection, upto: int = SCHEMA_VERSION) -> int:
    """Apply the migrations ``connection``'s database lacks; returns the version now."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS portcullis_schema (version INTEGER NOT NULL)")
        row = connection.execute("SELECT max(version) FROM portcullis_schema").fetchone()
        found = (row[0] if row else None) or 0
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(f"the shared state was written by a newer Portcullis (schema {found}, "
                               f"this one understands {SCHEMA_VERSION}): upgrade Portcullis")
        for version, statements in MIGRATIONS:
            if found < version <= upto:
                for statement in statements:
                    connection.execute(statement)
                connection.execute("INSERT INTO portcullis_schema (version) VALUES (%s)", (version,))
                found = version
    return found


def describe_dsn(dsn: str) -> str:
    """host:port/dbname of ``dsn``, for messages (never its password)."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable URL)"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def shared_secret(pool: Pool, name: str, size: int = 32) -> bytes:
    """A random secret every gateway of the cluster shares (made by the first to ask)."""
    with pool.connection() as conn:
        conn.execute("INSERT INTO portcullis_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                     (name, secrets.token_bytes(size)))
        row = conn.execute("SELECT value FROM portcullis_secrets WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return bytes(row[0])
