"""Sessions: an agent's requests in order, as a timeline auditors can read like a transcript.

A session is what the agent named with ``X-Portcullis-Session``; requests sent without
one are grouped by identity and client connection (address:port), which is what a
single agent process usually is. Replays are listed under their originals, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Blueprint, render_template, request

from review_ui.audit import data as audit_data
from review_ui.audit.data import Unavailable
from review_ui.audit.flowquery import FilterError, decode_cursor, encode_cursor, parse_time
from review_ui.auth import login_required
from review_ui.services import services

bp = Blueprint("audit_sessions", __name__, template_folder="templates")
NAV = [("audit_sessions.index", "Sessions")]

PAGE_SIZE = 50
DENIED = ("blocked", "rejected", "expired", "abandoned", "error")
#: Narrowest bar drawn, in percent of the timeline, so instant requests stay visible.
MIN_BAR_PCT = 0.6

_CONN = ("CASE WHEN session_id IS NULL THEN identity END AS conn_identity, "
         "CASE WHEN session_id IS NULL THEN client_addr END AS conn_client")
_KEY = "coalesce('s:' || session_id, 'c:' || conn_identity || '@' || conn_client)"
#: Joins identity and client address in step 2; cannot occur in either.
_SEP = "\x1f"

Query = Callable[[str, list[Any]], tuple[list[str], list[tuple]]]

#: "Recent flows in this session" on the review page. The session id is whatever the
#: agent sent, so any agent can name another's: the flows shown are the held flow's own
#: identity's alone, or agent-b could plant requests in agent-a's history.
RECENT_FLOWS_SQL = (
    "SELECT id, started_at, method, host, path, status_code, decision FROM flows "
    "WHERE session_id = ? AND identity IS NOT DISTINCT FROM ? ORDER BY started_at DESC LIMIT 15"
)


#: The review page's "Recent flows of this agent": the identity's own flows, any session.
IDENTITY_FLOWS_SQL = (
    "SELECT id, started_at, method, host, path, query, status_code, decision, session_id, duration_ms, actor "
    "FROM flows WHERE identity IS NOT DISTINCT FROM ? AND replay_of IS NULL ORDER BY started_at DESC LIMIT ?"
)


def recent_flows(identity: str | None, session_id: str) -> list[dict[str, Any]] | None:
    """The latest flows of ``identity`` in ``session_id`` (None when recording is off)."""
    return services().query(RECENT_FLOWS_SQL, [session_id, identity])


def identity_flows(identity: str | None, limit: int = 15) -> list[dict[str, Any]] | None:
    """The latest flows of ``identity`` in any session (None when recording is off)."""
    return services().query(IDENTITY_FLOWS_SQL, [identity, limit])


def _where(identity: str, since: str, until: str) -> tuple[str, list[Any]]:
    where, params = ["replay_of IS NULL", "started_at IS NOT NULL"], []
    if identity:
        where.append("identity = ?")
        params.append(identity)
    if since:
        where.append("started_at >= ?")
        params.append(parse_time(since, "since"))
    if until:
        where.append("started_at < ?")
        params.append(parse_time(until, "until"))
    return " AND ".join(where), params


def sessions_page(query: Query, identity: str = "", since: str = "", until: str = "", after: str = "",
                  limit: int = PAGE_SIZE) -> tuple[list[dict[str, Any]], str | None]:
    """Sessions, most recently active first, keyset-paginated on (last activity, key).

    Two steps, because the figures are expensive and only one page needs them: first the
    page's sessions (one max() per session over the filtered flows), then the counts of
    those sessions alone. On 1M flows this is ~4x faster than aggregating everything.
    With ``identity``, only that identity's flows are counted.
    """
    where, params = _where(identity, since, until)
    cursor, cursor_params = "", []
    if after:
        stamp, key = decode_cursor(after)
        cursor = "WHERE last_at < ? OR (last_at = ? AND key < ?)"
        cursor_params = [stamp, stamp, key]
    columns, rows = query(
        f"SELECT * FROM (SELECT *, {_KEY} AS key FROM (SELECT session_id, {_CONN}, max(started_at) AS last_at "
        f"FROM flows WHERE {where} GROUP BY ALL)) {cursor} ORDER BY last_at DESC, key DESC LIMIT {limit + 1}",
        params + cursor_params)
    page = [dict(zip(columns, row, strict=True)) for row in rows]
    older = None
    if len(page) > limit:
        page = page[:limit]
        older = encode_cursor(page[-1]["last_at"], page[-1]["key"])
    if not page:
        return [], None
    named = [s["session_id"] for s in page if s["session_id"] is not None]
    conns = [f"{s['conn_identity']}{_SEP}{s['conn_client']}" for s in page if s["session_id"] is None]
    columns, rows = query(
        f"SELECT {_KEY} AS key, string_agg(DISTINCT identity, ', ' ORDER BY identity) AS identities, count(*) AS flows, "
        f"min(started_at) AS first_at, count(*) FILTER (WHERE decision IN {DENIED}) AS denied, "
        "count(*) FILTER (WHERE actor IS NOT NULL) AS reviewed "
        f"FROM (SELECT *, {_CONN} FROM flows WHERE {where} AND (list_contains(?, session_id) OR "
        f"(session_id IS NULL AND list_contains(?, identity || '{_SEP}' || client_addr)))) GROUP BY key",
        params + [named, conns])
    figures = {row[0]: dict(zip(columns, row, strict=True)) for row in rows}
    return [{**s, **figures.get(s["key"], {})} for s in page], older


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
        rows, older = sessions_page(audit_data.store().query, identity, since, until, after)
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
