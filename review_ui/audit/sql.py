"""The SQL page: read-only queries over the live recording, as a table, CSV or Parquet.

Queries go through exactly the path ``portcullis sql`` uses (recordings.control.answer:
the read-only guard, a read-only transaction that is rolled back, the same error
codes), so the page accepts and refuses the same statements as the command line.
The query is in the URL (a GET form): a result can be shared as a link. Results are
shown a page of ``PAGE_ROWS`` at a time (``offset`` in the URL); CSV and Parquet have all.

The same limits apply too (recordings/analyst.py: a timeout, DuckDB's memory limit, the
result's size), and a query stops when the browser closes its connection: the page
shows the limit that was hit (``query_timeout``, ``query_memory``, ...).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, render_template, request

from recordings.control import answer, peer_gone
from recordings.results import render
from review_ui.audit import data as audit_data
from review_ui.audit.data import Unavailable
from review_ui.auth import login_required

bp = Blueprint("audit_sql", __name__, template_folder="templates")
NAV = [("audit_sql.index", "SQL")]

#: Rows per page of the SQL page (a thousand rows was 39k DOM nodes, 2 MB, 1.8 s).
PAGE_ROWS = 100
#: Furthest page offset accepted (beyond it, download the CSV).
MAX_OFFSET = 1_000_000
DOWNLOAD_ROWS = 1_000_000
SQL_MAX = 20_000
EXAMPLES = (
    "SELECT decision, count(*) AS flows FROM flows GROUP BY ALL ORDER BY flows DESC",
    "SELECT * FROM blocked_by_rule",
    "SELECT identity, host, count(*) AS flows, round(avg(duration_ms)) AS avg_ms FROM flows GROUP BY ALL ORDER BY flows DESC LIMIT 20",
    'SELECT e."at", e.flow_id, e.kind, e.actor, e.detail FROM events e WHERE kind IN (\'approved\', \'rejected\') ORDER BY e."at" DESC LIMIT 50',
)


#: Refusals after which the statement is run again as written (it may not be wrappable).
RETRY_UNWRAPPED = ("sql_error", "read_only")


def browser_gone() -> Callable[[], bool] | None:
    """A check that the browser has closed its connection (werkzeug's server exposes it)."""
    sock = request.environ.get("werkzeug.socket")
    return partial(peer_gone, sock) if sock is not None else None


def run(sql: str, limit: int, offset: int = 0) -> tuple[int, dict[str, Any]]:
    """(status, answer) for ``sql``: at most ``limit`` rows from ``offset`` on."""
    store = audit_data.store()
    gone = browser_gone()
    status, result = answer(
        store, "/query", {"sql": f"SELECT * FROM ({sql.strip().rstrip(';')}) LIMIT {limit} OFFSET {offset}"}, gone)
    if status != 200 and result.get("error") in RETRY_UNWRAPPED:
        # DESCRIBE, SHOW, EXPLAIN ... cannot be wrapped; run them as written (same guard).
        status, result = answer(store, "/query", {"sql": sql}, gone)
        if status == 200:
            result = {**result, "rows": result["rows"][offset:offset + limit]}
    return status, result


def page_offset() -> int:
    """The ``offset`` argument: a whole number of rows, 0 when absent or nonsense."""
    raw = request.args.get("offset", "0")
    return min(int(raw), MAX_OFFSET) if raw.isdigit() else 0


def refuse(status: int, result: dict[str, Any]) -> Any:
    """A download that failed: the code of the limit or error, and why."""
    if status == 499:  # the browser left: nobody reads this
        return Response(status=499)
    abort(status, f"{result['error']}: {result['message']}")


def query_text() -> str:
    sql = request.args.get("q", "").strip()
    if len(sql) > SQL_MAX:
        abort(413, f"The query is longer than {SQL_MAX} characters.")
    return sql


@bp.get("/audit/sql")
@login_required
def index() -> Any:
    sql = query_text()
    offset = page_offset()
    result, error, status, more = None, None, 200, False
    if sql:
        try:
            status, result = run(sql, PAGE_ROWS + 1, offset)
        except Unavailable as exc:
            status, result = exc.status, {"error": exc.code, "message": exc.message}
        if status != 200:
            error, result = result, None
        else:
            more = len(result["rows"]) > PAGE_ROWS
            result = {**result, "rows": result["rows"][:PAGE_ROWS]}
    return render_template("audit/sql.html", sql=sql, result=result, error=error, examples=EXAMPLES,
                           offset=offset, page_rows=PAGE_ROWS, more=more), status


@bp.get("/audit/sql.csv")
@login_required
def download_csv() -> Any:
    sql = query_text() or abort(400, "No query.")
    try:
        status, result = run(sql, DOWNLOAD_ROWS)
    except Unavailable as exc:
        abort(exc.status, exc.message)
    if status != 200:
        return refuse(status, result)
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
        status, result = answer(store, "/query", {"sql": sql, "output": str(output)}, browser_gone())
        if status != 200:
            return refuse(status, result)
        data = output.read_bytes()
    return Response(data, mimetype="application/vnd.apache.parquet",
                    headers={"Content-Disposition": 'attachment; filename="portcullis-query.parquet"'})
