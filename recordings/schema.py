"""The recording schema: tables, views, and the migrations that create and upgrade them.

The database carries its own version in ``schema_version``. Opening a file applies every
migration it has not seen yet (in one transaction each); a file written by a newer
Portcullis is refused rather than guessed at.

Events are ordered by ``"at", gateway, seq`` (:data:`EVENT_ORDER`): ``(gateway, seq)`` is
an event's key, unique across the gateways writing one lake (recordings/store.py, "Event
identity").

Times are ``TIMESTAMP`` values in UTC. ``at`` is a reserved word in DuckDB 2, so the
events' time column must be quoted in SQL: ``"at"`` or ``e.at``.
"""

from __future__ import annotations

import duckdb

#: (version, statements). Never edit a released migration: append a new one.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """
        CREATE TABLE flows (
            id VARCHAR NOT NULL,             -- the flow id the agent saw
            started_at TIMESTAMP,
            ended_at TIMESTAMP,
            duration_ms DOUBLE,
            identity VARCHAR,
            client_addr VARCHAR,
            session_id VARCHAR,
            method VARCHAR,
            scheme VARCHAR,
            host VARCHAR,
            port INTEGER,
            path VARCHAR,                    -- without the query string
            query VARCHAR,                   -- raw query string, without '?'
            request_headers JSON,
            request_body VARCHAR,            -- text bodies
            request_body_blob BLOB,          -- binary bodies
            request_size BIGINT,             -- full size before the recording cap
            request_truncated BOOLEAN,
            status_code INTEGER,
            response_headers JSON,
            response_body VARCHAR,
            response_body_blob BLOB,
            response_size BIGINT,
            response_truncated BOOLEAN,
            decision VARCHAR,
            rules VARCHAR[],
            reason VARCHAR,
            error VARCHAR,
            replay_of VARCHAR
        )
        """,
        """
        CREATE TABLE events (
            seq BIGINT,                      -- order of writing, ties on "at" broken by it
            flow_id VARCHAR NOT NULL,
            "at" TIMESTAMP,
            actor VARCHAR,
            kind VARCHAR,
            detail JSON
        )
        """,
    ]),
    (2, [
        "ALTER TABLE flows ADD COLUMN masked INTEGER DEFAULT 0",
        "ALTER TABLE flows ADD COLUMN actor VARCHAR",
    ]),
    # An event's key is (gateway, seq): seq counts per gateway, so gateways writing one
    # lake no longer hand out the same numbers (recordings/store.py, "Event identity").
    # Rows from before have gateway NULL: in a file they are its one writer's, in a lake
    # they keep the seq they had (possibly shared by two gateways).
    (3, [
        "ALTER TABLE events ADD COLUMN gateway VARCHAR",
    ]),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]

#: The one order of events: by time, ties by the writing gateway and its write order.
EVENT_ORDER = '"at", gateway, seq'

#: Views for the common questions; recreated on every open so they follow the code.
VIEWS: dict[str, str] = {
    "blocked_by_rule": """
        SELECT coalesce(rules[1], '(default)') AS rule, count(*) AS flows,
               min(started_at) AS first_at, max(started_at) AS last_at
        FROM flows WHERE decision IN ('blocked', 'rejected')
        GROUP BY ALL ORDER BY flows DESC
    """,
    "decisions_per_identity_per_day": """
        SELECT CAST(started_at AS DATE) AS day, identity, decision, count(*) AS flows
        FROM flows GROUP BY ALL ORDER BY day, identity, decision
    """,
    "slowest_hosts": """
        SELECT host, count(*) AS flows, round(avg(duration_ms), 1) AS avg_ms,
               round(quantile_cont(duration_ms, 0.95), 1) AS p95_ms, round(max(duration_ms), 1) AS max_ms
        FROM flows WHERE decision IN ('allowed', 'approved') AND duration_ms IS NOT NULL
        GROUP BY host ORDER BY p95_ms DESC
    """,
    "errors_by_host": """
        SELECT host, error, count(*) AS flows, max(started_at) AS last_at
        FROM flows WHERE decision = 'error' GROUP BY ALL ORDER BY flows DESC
    """,
    "flow_timeline": """
        SELECT e.flow_id, e.gateway, e.seq, e.at, e.kind, e.actor, e.detail
        FROM events e ORDER BY e.flow_id, e.at, e.gateway, e.seq
    """,
    # One row per SQL text a sql: rule classified (the `classified` events of
    # addons/querylang/rules.py), with who sent it and what the gateway decided:
    #   SELECT identity, count(*) FROM sql_statements
    #   WHERE list_contains(where_missing, 'delete') AND "at" > now() - INTERVAL 7 DAY GROUP BY ALL
    "sql_statements": """
        SELECT e.flow_id, e.at AS "at", f.identity, f.method, f.host, f.path, f.decision,
               CAST(json_extract(e.detail, '$.classification.kinds') AS VARCHAR[]) AS kinds,
               CAST(json_extract(e.detail, '$.classification.tables_read') AS VARCHAR[]) AS tables_read,
               CAST(json_extract(e.detail, '$.classification.tables_written') AS VARCHAR[]) AS tables_written,
               CAST(json_extract(e.detail, '$.classification.functions') AS VARCHAR[]) AS functions,
               CAST(json_extract(e.detail, '$.classification.where_missing') AS VARCHAR[]) AS where_missing,
               CAST(json_extract(e.detail, '$.classification.limit_missing') AS BOOLEAN) AS limit_missing,
               CAST(json_extract(e.detail, '$.classification.statements') AS INTEGER) AS statements,
               json_extract_string(e.detail, '$.classification.unknown_reason') AS unknown_reason,
               json_extract_string(e.detail, '$.classification.summary') AS summary
        FROM events e LEFT JOIN flows f ON f.id = e.flow_id
        WHERE e.kind = 'classified' AND json_extract_string(e.detail, '$.language') = 'sql'
        ORDER BY e.at, e.gateway, e.seq
    """,
    "graphql_operations": """
        SELECT e.flow_id, e.at AS "at", f.identity, f.host, f.path, f.decision,
               json_extract_string(e.detail, '$.classification.kind') AS operation,
               json_extract_string(e.detail, '$.classification.name') AS name,
               CAST(json_extract(e.detail, '$.classification.root_fields') AS VARCHAR[]) AS root_fields,
               CAST(json_extract(e.detail, '$.classification.persisted') AS BOOLEAN) AS persisted,
               json_extract_string(e.detail, '$.classification.summary') AS summary
        FROM events e LEFT JOIN flows f ON f.id = e.flow_id
        WHERE e.kind = 'classified' AND json_extract_string(e.detail, '$.language') = 'graphql'
        ORDER BY e.at, e.gateway, e.seq
    """,
}


class SchemaError(Exception):
    """The database cannot be used by this version of Portcullis; the message says why."""


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = 'main' "
        "AND table_name = 'schema_version'"
    ).fetchone()
    if not exists or not exists[0]:
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0) if row else 0


def migrate(con: duckdb.DuckDBPyConnection, path: str = "", upto: int = SCHEMA_VERSION) -> int:
    """Bring the database to ``upto`` (default: the latest version). Returns the old version."""
    found = current_version(con)
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"{path or 'the database'} has recording schema version {found}, newer than this "
            f"Portcullis understands ({SCHEMA_VERSION}): upgrade Portcullis or use another --db"
        )
    for version, statements in MIGRATIONS:
        if found < version <= upto:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)"
                )
                for statement in statements:
                    con.execute(statement)
                con.execute(
                    "INSERT INTO schema_version VALUES (?, CAST(now() AT TIME ZONE 'UTC' AS TIMESTAMP))",
                    [version],
                )
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
    if upto == SCHEMA_VERSION:
        for name, body in VIEWS.items():
            con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
    return found
