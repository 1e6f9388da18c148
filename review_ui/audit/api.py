"""The audit JSON API: replay a recorded flow, follow a replay, list flows and sessions.

    POST /api/flows/<id>/replay     {"wait": seconds?}  -> the replay (202 while running or held)
    GET  /api/replays/<new_id>                          -> the replay's state now
    GET  /api/audit/flows?identity=&host=&...&after=&before=&limit=  -> a page of flows
    GET  /api/audit/session?id=SESSION  (or ?identity=&client=)      -> its flows, in order

``wait`` (default 10, at most 60) is how long the call waits for the replay to finish or
to be held for approval; a replay still running afterwards answers 202 with
``"state": "pending"`` and can be followed with ``GET /api/replays/<new_id>``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from addons.replay.addon import ReplayError
from review_ui.audit import data as audit_data
from review_ui.audit.data import Unavailable, to_json_value
from review_ui.audit.flowquery import FilterError, FlowFilter
from review_ui.auth import api_auth_required, current_actor
from review_ui.errors import api_error

bp = Blueprint("audit_api", __name__, url_prefix="/api")

WAIT_DEFAULT_S = 10.0
WAIT_MAX_S = 60.0


def start_replay(flow_id: str, wait: float) -> dict[str, Any]:
    """Replay ``flow_id`` as the current reviewer; its summary after up to ``wait`` s."""
    store = audit_data.store()
    row = store.flow(flow_id)
    if row is None:
        raise ReplayError(404, "unknown_flow", f"no recorded flow {flow_id}")
    ticket = audit_data.replayer().replay(flow_id, current_actor().name, row=row)
    return {**ticket.wait(wait), "request": audit_data.request_line(row)}


@bp.post("/flows/<flow_id>/replay")
@api_auth_required
def replay(flow_id: str) -> Any:
    payload = request.get_json(silent=True) or {}
    try:
        wait = min(max(float(payload.get("wait", WAIT_DEFAULT_S)), 0.0), WAIT_MAX_S)
    except (TypeError, ValueError):
        return api_error(400, "bad_request", "wait: expected a number of seconds")
    try:
        result = start_replay(flow_id, wait)
    except ReplayError as exc:
        return api_error(exc.status, exc.code, exc.message)
    return jsonify(result), 200 if result["state"] == "done" else 202


@bp.get("/replays/<new_id>")
@api_auth_required
def replay_state(new_id: str) -> Any:
    try:
        ticket = audit_data.replayer().get(new_id)
    except Unavailable as exc:
        return api_error(exc.status, exc.code, exc.message)
    if ticket is None:
        return api_error(404, "unknown_replay", f"no replay {new_id} in this gateway process")
    return jsonify(ticket.summary())


@bp.get("/audit/flows")
@api_auth_required
def flows() -> Any:
    try:
        limit = int(request.args.get("limit", "50"))
        page = audit_data.flows_page(FlowFilter.from_args(request.args), request.args.get("after", ""),
                                     request.args.get("before", ""), limit)
    except (FilterError, ValueError) as exc:
        return api_error(400, "bad_filter", str(exc))
    except Unavailable as exc:
        return api_error(exc.status, exc.code, exc.message)
    return jsonify({"flows": to_json_value(page.rows), "older": page.older, "newer": page.newer})


@bp.get("/audit/session")
@api_auth_required
def session() -> Any:
    args = request.args
    try:
        found = audit_data.session_flows(args.get("id", ""), args.get("identity", ""), args.get("client", ""))
    except FilterError as exc:
        return api_error(400, "bad_filter", str(exc))
    except Unavailable as exc:
        return api_error(exc.status, exc.code, exc.message)
    return jsonify({"flows": to_json_value(found)})
