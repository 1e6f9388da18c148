"""Flows-page query speed on a recording of 1,000,000 flows.

    python -m bench.audit [--flows 1000000] [--db PATH] [--keep]

Seeds a DuckDB file with the recorder's schema (recordings.schema) with generated flows
(20 identities, 40 hosts, 7 methods, realistic status/decision mix, sessions of ~20
flows, rules on blocked/held ones, small JSON bodies, 30 days of timestamps) and their
events (received, decided, held and the decision for reviewed ones, completed), then
times the exact queries the review UI's flows page runs (review_ui.audit.flowquery): the first
page, a page deep in the table through its keyset cursor, the previous page, and each
filter; then the sessions list, a session timeline and a flow's detail page.
Each query runs 5 times after one warm-up; the median and the worst are reported.
Target: every page under 300 ms on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from recordings import schema
from review_ui.audit.flowquery import FlowFilter, decode_cursor, encode_cursor, page_query
from review_ui.audit.sessions import sessions_page

TARGET_MS = 300.0
RUNS = 5


def seed(con: duckdb.DuckDBPyConnection, count: int) -> None:
    """Insert ``count`` generated flows (one INSERT ... SELECT over range())."""
    con.execute(f"""
        INSERT INTO flows (id, started_at, ended_at, duration_ms, identity, client_addr, session_id,
                           method, scheme, host, port, path, query, request_headers, request_body,
                           request_size, request_truncated, status_code, response_headers,
                           response_body, response_size, response_truncated, decision, rules,
                           reason, error, replay_of, masked, actor)
        SELECT
            printf('%08x-0000-4000-8000-%012x', i, i * 7919) AS id,
            TIMESTAMP '2026-10-22 00:00:00' + to_microseconds(CAST(i * (30 * 86400 * 1e6 / {count}) AS BIGINT)) AS started_at,
            started_at + to_microseconds(CAST(d * 1000 AS BIGINT)) AS ended_at,
            d AS duration_ms,
            'agent-' || (i % 20) AS identity,
            '127.0.0.1:' || (40000 + (i // 20) % 20000) AS client_addr,
            CASE WHEN i % 10 < 8 THEN 'sess-' || (i // 20) END AS session_id,
            ['GET', 'GET', 'GET', 'POST', 'DELETE', 'PUT', 'PATCH'][1 + i % 7] AS method,
            'https' AS scheme,
            'api' || (i % 40) || '.example.com' AS host,
            443 AS port,
            '/v1/' || ['customers', 'orders', 'refunds', 'tables', 'invoices'][1 + (i // 7) % 5] || '/' || (i % 9973) AS path,
            CASE WHEN i % 3 = 0 THEN 'page=' || (i % 17) END AS query,
            '{{"host": "api.example.com", "content-type": "application/json", "authorization": "[redacted]"}}' AS request_headers,
            CASE WHEN i % 7 >= 3 THEN '{{"amount": ' || (i % 5000) || ', "note": "n"}}' END AS request_body,
            40 AS request_size, false AS request_truncated,
            status AS status_code,
            '{{"content-type": "application/json"}}' AS response_headers,
            '{{"id": ' || i || ', "ok": true, "items": [1, 2, 3]}}' AS response_body,
            48 AS response_size, false AS response_truncated,
            decision,
            CASE WHEN decision = 'allowed' THEN []::VARCHAR[]
                 ELSE ['rule-' || (i % 30)] END AS rules,
            CASE WHEN decision <> 'allowed' THEN 'generated' END AS reason,
            CASE WHEN decision = 'error' THEN 'upstream_unreachable' END AS error,
            NULL AS replay_of,
            CASE WHEN i % 11 = 0 THEN 2 ELSE 0 END AS masked,
            CASE WHEN decision IN ('approved', 'rejected') THEN 'reviewer-' || (i % 4) END AS actor
        FROM (
            SELECT i, CAST(5 + hash(i) % 400 AS DOUBLE) AS d,
                CASE WHEN CAST(hash(i * 3) % 100 AS INTEGER) < 84 THEN 'allowed'
                     WHEN CAST(hash(i * 3) % 100 AS INTEGER) < 94 THEN 'blocked'
                     WHEN CAST(hash(i * 3) % 100 AS INTEGER) < 97 THEN 'approved'
                     WHEN CAST(hash(i * 3) % 100 AS INTEGER) < 98 THEN 'rejected'
                     WHEN CAST(hash(i * 3) % 100 AS INTEGER) < 99 THEN 'expired'
                     ELSE 'error' END AS decision,
                CASE WHEN CAST(hash(i * 3) % 100 AS INTEGER) < 84 OR CAST(hash(i * 3) % 100 AS INTEGER) BETWEEN 94 AND 96
                     THEN [200, 200, 200, 201, 404, 500][1 + CAST(hash(i * 5) % 6 AS BIGINT)]
                     WHEN CAST(hash(i * 3) % 100 AS INTEGER) >= 99 THEN 502 ELSE 403 END AS status
            FROM range({count}) t(i)
        )
    """)


def seed_events(con: duckdb.DuckDBPyConnection) -> None:
    """The trail of every flow: received, decided, completed; held and the decision when reviewed."""
    con.execute("""
        INSERT INTO events (seq, flow_id, "at", actor, kind, detail)
        SELECT row_number() OVER (), flow_id, "at", actor, kind, detail FROM (
            SELECT id AS flow_id, started_at AS "at", 'gateway' AS actor, 'received' AS kind, '{}' AS detail FROM flows
            UNION ALL SELECT id, started_at + INTERVAL 1 MILLISECOND, 'gateway', 'decided',
                             '{"action": "' || decision || '"}' FROM flows
            UNION ALL SELECT id, started_at + INTERVAL 2 MILLISECOND, 'gateway', 'held', '{}' FROM flows
                      WHERE decision IN ('approved', 'rejected', 'expired')
            UNION ALL SELECT id, ended_at - INTERVAL 3 MILLISECOND, coalesce(actor, 'gateway'), decision, '{}'
                      FROM flows WHERE decision IN ('approved', 'rejected', 'expired')
            UNION ALL SELECT id, ended_at, 'gateway', 'completed', '{}' FROM flows
        )
    """)


def timed(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> tuple[float, list]:
    cur = con.cursor()
    started = time.perf_counter()
    rows = cur.execute(sql, params).fetchall()
    elapsed = (time.perf_counter() - started) * 1000
    cur.close()
    return elapsed, rows


def repeat(label: str, run: Callable[[], int]) -> dict:
    """Time ``run`` (which returns a row count) RUNS times after one warm-up."""
    run()
    times, rows = [], 0
    for _ in range(RUNS):
        started = time.perf_counter()
        rows = run()
        times.append((time.perf_counter() - started) * 1000)
    return {"query": label, "rows": rows, "median_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1)}


def measure(con: duckdb.DuckDBPyConnection, label: str, flt: FlowFilter, after: str = "",
            before: str = "") -> dict:
    query = page_query(flt, after=after, before=before)
    return repeat(label, lambda: min(len(timed(con, query.sql, query.params)[1]), query.limit))


def other_pages(con: duckdb.DuckDBPyConnection, flow_id: str) -> list[dict]:
    """The sessions list (all time, one identity, one day), a session timeline, a flow's page."""

    def query(sql: str, params: list) -> tuple[list[str], list[tuple]]:
        cur = con.cursor()
        cur.execute(sql, params)
        return [d[0] for d in cur.description or []], cur.fetchall()

    def sessions(**kwargs: str) -> Callable[[], int]:
        return lambda: len(sessions_page(query, **kwargs)[0])

    second = sessions_page(query)[1] or ""
    session_ids = [r[0] for r in con.execute("SELECT id FROM flows WHERE session_id = 'sess-12345'").fetchall()]
    return [
        repeat("sessions: first page, all time", sessions()),
        repeat("sessions: second page, all time", sessions(after=second)),
        repeat("sessions: one identity", sessions(identity="agent-7")),
        repeat("sessions: one day", sessions(since="2026-11-01T00:00", until="2026-11-02T00:00")),
        repeat("session timeline (sess-12345)", lambda: len(timed(
            con, "SELECT * FROM flows WHERE session_id = ? ORDER BY started_at, id LIMIT 5000",
            ["sess-12345"])[1])),
        repeat("session timeline: approval waits", lambda: len(timed(
            con, 'SELECT flow_id, kind, "at", actor, detail FROM events WHERE flow_id IN (SELECT unnest(?)) '
            "AND kind IN ('held', 'approved', 'rejected', 'expired', 'abandoned') ORDER BY \"at\", seq",
            [session_ids])[1])),
        repeat("flow detail: row by id", lambda: len(timed(
            con, "SELECT * FROM flows WHERE id = ? LIMIT 1", [flow_id])[1])),
        repeat("flow detail: events of the flow", lambda: len(timed(
            con, 'SELECT * FROM events WHERE flow_id = ? ORDER BY "at", seq', [flow_id])[1])),
        repeat("flow detail: replays of the flow", lambda: len(timed(
            con, "SELECT id FROM flows WHERE replay_of = ? LIMIT 50", [flow_id])[1])),
    ]


def deep_cursor(con: duckdb.DuckDBPyConnection, offset: int) -> str:
    """The cursor of a page ``offset`` rows into the table (as if someone had paged there)."""
    started_at, flow_id = con.execute(
        "SELECT started_at, id FROM flows ORDER BY started_at DESC, id DESC LIMIT 1 OFFSET ?", [offset]
    ).fetchone()
    return encode_cursor(started_at, flow_id)


def run(count: int, db: Path) -> dict:
    con = duckdb.connect(str(db))
    schema.migrate(con, str(db))
    have = con.execute("SELECT count(*) FROM flows").fetchone()[0]
    seed_s = 0.0
    if have != count or not con.execute("SELECT count(*) FROM events").fetchone()[0]:
        con.execute("DELETE FROM flows")
        con.execute("DELETE FROM events")
        started = time.perf_counter()
        seed(con, count)
        seed_events(con)
        con.execute("CHECKPOINT")
        seed_s = time.perf_counter() - started
    con.close()
    # Measure as the UI does: a fresh connection, cold caches for the first warm-up only.
    con = duckdb.connect(str(db), read_only=True)
    middle = deep_cursor(con, count // 2)
    near_end = deep_cursor(con, count - 200)
    cases = [
        ("first page, no filter", FlowFilter(), "", ""),
        ("page 10,000 (keyset, middle)", FlowFilter(), middle, ""),
        ("previous page from the middle", FlowFilter(), "", middle),
        ("last pages (keyset)", FlowFilter(), near_end, ""),
        ("identity", FlowFilter(identity="agent-7"), "", ""),
        ("host", FlowFilter(host="api13.example.com"), "", ""),
        ("method", FlowFilter(method="DELETE"), "", ""),
        ("path contains", FlowFilter(path="refunds/99"), "", ""),
        ("status 5xx", FlowFilter(status="5xx"), "", ""),
        ("decision rejected", FlowFilter(decision="rejected"), "", ""),
        ("rule", FlowFilter(rule="rule-7"), "", ""),
        ("time range (one day)", FlowFilter(since="2026-11-01T00:00", until="2026-11-02T00:00"), "", ""),
        ("session", FlowFilter(session="sess-12345"), "", ""),
        ("identity + decision + path, middle page",
         FlowFilter(identity="agent-3", decision="blocked", path="orders"), middle, ""),
        ("rare match (scans everything)", FlowFilter(path="no-such-path"), "", ""),
    ]
    results = [measure(con, label, flt, after, before) for label, flt, after, before in cases]
    middle_id = decode_cursor(middle)[1]
    others = other_pages(con, middle_id)
    size_mb = db.stat().st_size / 1e6
    con.close()
    return {"flows": count, "db_mb": round(size_mb, 1), "seed_s": round(seed_s, 1), "results": results,
            "other_pages": others, "target_ms": TARGET_MS, "worst_ms": max(r["max_ms"] for r in results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="DuckDB file (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="portcullis-bench-audit-")
        args.db = Path(tmp.name) / "flows.duckdb"
    try:
        report = run(args.flows, args.db)
    finally:
        if tmp is not None and not args.keep:
            tmp.cleanup()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['flows']:,} flows, {report['db_mb']} MB" +
          (f", seeded in {report['seed_s']} s" if report["seed_s"] else ""))
    print(f"{'query':<44} {'rows':>5} {'median ms':>10} {'max ms':>8}")
    for r in report["results"]:
        flag = "" if r["max_ms"] < TARGET_MS else "  over target"
        print(f"{r['query']:<44} {r['rows']:>5} {r['median_ms']:>10} {r['max_ms']:>8}{flag}")
    print(f"worst: {report['worst_ms']} ms (target < {TARGET_MS:g} ms per page)")
    print(f"\n{'other audit pages':<44} {'rows':>5} {'median ms':>10} {'max ms':>8}")
    for r in report["other_pages"]:
        print(f"{r['query']:<44} {r['rows']:>5} {r['median_ms']:>10} {r['max_ms']:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
