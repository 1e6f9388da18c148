"""The SQL page: read-only queries over the live recording, as a table, CSV or Parquet.

Queries go through exactly the path ``portcullis sql`` uses (recordings.control.answer:
the read-only guard, a read-only transaction that is rolled back, the same error
codes), so the page accepts and refuses the same statements as the command line.
The query is in the URL (a GET form): a result can be shared as a link.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, render_template, request

from gateway.commands.sql import render
from recordings.control import answer
from review_ui import audit_data
from review_ui.audit_data import Unavailable
from review_ui.auth import login_required

bp = Blueprint("audit_sql", __name__)
NAV = [("audit_sql.index", "SQL")]

SHOWN_ROWS = 1000
DOWNLOAD_ROWS = 1_000_000
SQL_MAX = 20_000
EXAMPLES = (
    "SELECT decision, count(*) AS flows FROM flows GROUP BY ALL ORDER BY flows DESC",
    "SELECT * FROM blocked_by_rule",
    "SELECT identity, host, count(*) AS flows, round(avg(duration_ms)) AS avg_ms FROM flows GROUP BY ALL ORDER BY flows DESC LIMIT 20",
    'SELECT e."at", e.flow_id, e.kind, e.actor, e.detail FROM events e WHERE kind IN (\'approved\', \'rejected\') ORDER BY e."at" DESC LIMIT 50',
)


def run(sql: str, limit: int) -> tuple[int, dict[str, Any]]:
    """(status, answer) for ``sql``, at most ``limit`` rows when the statement allows a LIMIT."""
    store = audit_data.store()
    status, result = answer(store, "/query", {"sql": f"SELECT * FROM ({sql.strip().rstrip(';')}) LIMIT {limit}"})
    if status != 200:
        # DESCRIBE, SHOW, EXPLAIN ... cannot be wrapped; run them as written (same guard).
        status, result = answer(store, "/query", {"sql": sql})
    return status, result


def query_text() -> str:
    sql = request.args.get("q", "").strip()
    if len(sql) > SQL_MAX:
        abort(413, f"The query is longer than {SQL_MAX} characters.")
    return sql


@bp.get("/audit/sql")
@login_required
def index() -> Any:
    sql = query_text()
    result, error, status = None, None, 200
    if sql:
        try:
            status, result = run(sql, SHOWN_ROWS + 1)
        except Unavailable as exc:
            status, result = exc.status, {"error": exc.code, "message": exc.message}
        if status != 200:
            error, result = result, None
    return render_template("audit/sql.html", sql=sql, result=result, error=error, examples=EXAMPLES,
                           shown=SHOWN_ROWS), status


@bp.get("/audit/sql.csv")
@login_required
def download_csv() -> Any:
    sql = query_text() or abort(400, "No query.")
    try:
        status, result = run(sql, DOWNLOAD_ROWS)
    except Unavailable as exc:
        abort(exc.status, exc.message)
    if status != 200:
        abort(status, f"{result['error']}: {result['message']}")
    return Response(render(result["columns"], result["rows"], "csv"), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="portcullis-query.csv"'})


@bp.get("/audit/sql.parquet")
@login_required
def download_parquet() -> Any:
    sql = query_text() or abort(400, "No query.")
    try:
        store = audit_data.store()
    except Unavailable as exc:
        abort(exc.status, exc.message)
    with tempfile.TemporaryDirectory(prefix="portcullis-sql-") as directory:
        output = Path(directory) / "result.parquet"
        status, result = answer(store, "/query", {"sql": sql, "output": str(output)})
        if status != 200:
            abort(status, f"{result['error']}: {result['message']}")
        data = output.read_bytes()
    return Response(data, mimetype="application/vnd.apache.parquet",
                    headers={"Content-Disposition": 'attachment; filename="portcullis-query.parquet"'})
