"""Sessions: an agent's requests in order, as a timeline auditors can read like a transcript.

A session is what the agent named with ``X-Portcullis-Session``; requests sent without
one are grouped by identity and client connection (address:port), which is what a
single agent process usually is. Replays are listed under their originals, not here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, render_template, request

from review_ui import audit_data
from review_ui.audit_data import Unavailable
from review_ui.auth import login_required
from review_ui.flowquery import FilterError, decode_cursor, encode_cursor, parse_time

bp = Blueprint("audit_sessions", __name__)
NAV = [("audit_sessions.index", "Sessions")]

PAGE_SIZE = 50
DENIED = ("blocked", "rejected", "expired", "abandoned", "error")
#: Narrowest bar drawn, in percent of the timeline, so instant requests stay visible.
MIN_BAR_PCT = 0.6

_KEY = "coalesce('s:' || session_id, 'c:' || identity || '@' || client_addr)"


def sessions_query(identity: str = "", since: str = "", until: str = "", after: str = "",
                   limit: int = PAGE_SIZE) -> tuple[str, list[Any]]:
    """Sessions, most recently active first, keyset-paginated on (last activity, key)."""
    where, params = ["replay_of IS NULL", "started_at IS NOT NULL"], []
    if since:
        where.append("started_at >= ?")
        params.append(parse_time(since, "since"))
    if until:
        where.append("started_at < ?")
        params.append(parse_time(until, "until"))
    having, having_params = "", []
    if identity:
        having = "HAVING list_contains(list(DISTINCT identity), ?)"
        having_params.append(identity)
    if after:
        stamp, key = decode_cursor(after)
        having += (" AND " if having else "HAVING ") + \
            "(max(started_at) < ? OR (max(started_at) = ? AND key < ?))"
        having_params += [stamp, stamp, key]
    sql = (
        "SELECT key, any_value(session_id) AS session_id, any_value(conn_identity) AS conn_identity, "
        "any_value(conn_client) AS conn_client, string_agg(DISTINCT identity, ', ') AS identities, "
        "count(*) AS flows, min(started_at) AS first_at, max(started_at) AS last_at, "
        f"count(*) FILTER (WHERE decision IN {DENIED}) AS denied, "
        "count(*) FILTER (WHERE actor IS NOT NULL) AS reviewed "
        f"FROM (SELECT *, {_KEY} AS key, "
        "CASE WHEN session_id IS NULL THEN identity END AS conn_identity, "
        "CASE WHEN session_id IS NULL THEN client_addr END AS conn_client "
        f"FROM flows WHERE {' AND '.join(where)}) "
        f"GROUP BY key {having} ORDER BY last_at DESC, key DESC LIMIT {limit + 1}"
    )
    return sql, params + having_params


def timeline(flows: list[dict[str, Any]], waits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Positions (percent of the session's span) of each request and each approval wait."""
    if not flows:
        return {"start": None, "span_s": 0, "items": []}
    start = flows[0]["started_at"]
    end = max((f["ended_at"] or f["started_at"]) for f in flows)
    span = max((end - start).total_seconds(), 0.001)

    def pct(at: datetime | None) -> float:
        return 0.0 if at is None else min(100.0, max(0.0, (at - start).total_seconds() / span * 100))

    items = []
    for flow in flows:
        left = pct(flow["started_at"])
        right = pct(flow["ended_at"] or flow["started_at"])
        spans = []
        for wait in waits.get(flow["id"], []):
            w_left = pct(wait["start"])
            w_right = pct(wait["end"] or flow["ended_at"] or end)
            spans.append({**wait, "x": round(w_left, 3), "width": round(max(w_right - w_left, MIN_BAR_PCT), 3),
                          "seconds": ((wait["end"] or end) - wait["start"]).total_seconds()})
        items.append({"flow": flow, "x": round(min(left, 100 - MIN_BAR_PCT), 3),
                      "width": round(max(right - left, MIN_BAR_PCT), 3), "waits": spans,
                      "offset_s": (flow["started_at"] - start).total_seconds()})
    return {"start": start, "end": end, "span_s": span, "items": items}


@bp.get("/audit/sessions")
@login_required
def index() -> Any:
    args = request.args
    identity, since, until = (args.get(k, "").strip() for k in ("identity", "since", "until"))
    after = args.get("after", "")
    rows, older, error, status = [], None, None, 200
    try:
        sql, params = sessions_query(identity, since, until, after)
        columns, found = audit_data.store().query(sql, params)
        rows = audit_data.rows_of(columns, found)
        if len(rows) > PAGE_SIZE:
            rows = rows[:PAGE_SIZE]
            older = encode_cursor(rows[-1]["last_at"], rows[-1]["key"])
    except FilterError as exc:
        error, status = str(exc), 400
    except Unavailable as exc:
        error, status = exc.message, exc.status
    filters = {k: v for k, v in (("identity", identity), ("since", since), ("until", until)) if v}
    return render_template("audit/sessions.html", sessions=rows, older=older, paged=bool(after),
                           filters=filters, error=error), status


@bp.get("/audit/session")
@login_required
def show() -> Any:
    args = request.args
    key = {"session_id": args.get("id", ""), "identity": args.get("identity", ""),
           "client": args.get("client", "")}
    try:
        flows = audit_data.session_flows(**key)
    except FilterError as exc:
        return render_template("audit/session.html", key=key, error=str(exc), line=None), 400
    except Unavailable as exc:
        return render_template("audit/session.html", key=key, error=exc.message, line=None), exc.status
    line = timeline(flows, audit_data.waits_of([f["id"] for f in flows]))
    return render_template("audit/session.html", key=key, line=line, error=None,
                           truncated=len(flows) >= audit_data.SESSION_FLOWS_MAX)
