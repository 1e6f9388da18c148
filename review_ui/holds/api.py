"""The JSON API: the same decisions as the pages, for scripts and chat-ops bots.

    GET    /api/pending                 pending holds, most urgent first
    GET    /api/flows/<id>              one held flow: request, approvals, events
    GET    /api/flows/<id>/body         the exact body bytes of a pending hold (a download)
    POST   /api/flows/<id>/approve      {"comment": "...", "grant": "15m"?}
    POST   /api/flows/<id>/reject       {"comment": "..."}
    GET    /api/grants                  active grants
    DELETE /api/grants/<id>             revoke a grant at once
    GET    /api/decisions               recent decisions (this process)
    GET    /api/events                  server-sent events: held, updated, decided, grants
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from addons.core.secretforms import redact_url
from addons.holds.book import CLIENT_HEADER, DecisionError
from addons.holds.spec import parse_duration
from review_ui.auth import api_auth_required, current_actor
from review_ui.errors import api_error
from review_ui.services import services

bp = Blueprint("api", __name__, url_prefix="/api")

COMMENT_MAX = 2000


def public(hold: dict[str, Any]) -> dict[str, Any]:
    """A hold, grant or decision as the API shows it: query secrets in its URL redacted
    (``?api_key=[redacted]``), as its headers already are."""
    shown = {**hold, "url": redact_url(hold["url"])} if isinstance(hold.get("url"), str) else dict(hold)
    if isinstance(shown.get("events"), list):  # the held event repeats the URL
        shown["events"] = [{**e, "detail": public(e["detail"])} if isinstance(e.get("detail"), dict) else e
                           for e in shown["events"]]
    return shown


def decision_error(exc: DecisionError) -> Any:
    return api_error(exc.status, exc.code, exc.message)


def flow_details(flow_id: str) -> dict[str, Any]:
    """A held flow as the API and the review page show it (raises DecisionError 404)."""
    return services().holds.get(flow_id)


def held_body_response(flow_id: str) -> Any:
    """The exact bytes the upstream will get, as a download; JSON error if not available.

    The review page shows a decoded prefix; a body it cannot show in full (or cannot
    decode) must still be reviewable, byte for byte. Only pending holds keep the bytes.
    """
    try:
        raw, digest = services().holds.held_body(flow_id)
    except DecisionError as exc:
        return decision_error(exc)
    return Response(raw, mimetype="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{flow_id}.body"',
        "X-Body-SHA256": digest, "Cache-Control": "no-store",
    })


def may_decide(flow_id: str) -> tuple[bool, str | None]:
    """Whether the current reviewer may decide this flow, and if not, why."""
    return services().holds.may_decide(flow_id, current_actor())


@bp.get("/pending")
@api_auth_required
def pending() -> Any:
    return jsonify({"pending": [public(h) for h in services().holds.queue()]})


@bp.get("/flows/<flow_id>")
@api_auth_required
def flow(flow_id: str) -> Any:
    try:
        details = flow_details(flow_id)
        allowed, why = may_decide(flow_id)
    except DecisionError as exc:
        return decision_error(exc)
    return jsonify({**public(details), "you_may_decide": allowed, "why_not": why})


@bp.get("/flows/<flow_id>/body")
@api_auth_required
def body(flow_id: str) -> Any:
    return held_body_response(flow_id)


def _body() -> dict[str, Any] | None:
    if not request.data:
        return {}
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else None


def _comment(data: dict[str, Any]) -> str | None:
    comment = data.get("comment", "")
    return comment[:COMMENT_MAX] if isinstance(comment, str) else None


@bp.post("/flows/<flow_id>/approve")
@api_auth_required
def approve(flow_id: str) -> Any:
    data = _body()
    if data is None or (comment := _comment(data)) is None:
        return api_error(400, "bad_request", 'expected a JSON object like {"comment": "...", "grant": "15m"}')
    grant = None
    if data.get("grant"):
        try:
            grant = parse_duration(data["grant"])
        except ValueError as exc:
            return api_error(400, "bad_grant", str(exc))
    return _decide(services().holds.approve, flow_id, comment, grant)


@bp.post("/flows/<flow_id>/reject")
@api_auth_required
def reject(flow_id: str) -> Any:
    data = _body()
    if data is None or (comment := _comment(data)) is None:
        return api_error(400, "bad_request", 'expected a JSON object like {"comment": "..."}')
    return _decide(services().holds.reject, flow_id, comment)


def decision_origin() -> str:
    """Where an API decision comes from, by how its caller authenticated: a browser
    session (with its CSRF token) is the review UI; a token is the API, or the terminal
    when ``portcullis approve/reject`` say so. Nothing a client sends makes it ``slack``
    (only the signed Slack callback, review_ui.slack, decides with that)."""
    if not g.get("via_token"):
        return "ui"
    return "cli" if request.headers.get(CLIENT_HEADER, "").strip().lower() == "cli" else "api"


def _decide(action: Any, flow_id: str, *args: Any) -> Any:
    try:
        summary = action(flow_id, current_actor(), *args, via=decision_origin())
    except DecisionError as exc:
        return decision_error(exc)
    return jsonify(public(summary))


@bp.get("/grants")
@api_auth_required
def grants() -> Any:
    return jsonify({"grants": [public(g) for g in services().holds.grants()]})


@bp.delete("/grants/<grant_id>")
@api_auth_required
def revoke(grant_id: str) -> Any:
    try:
        grant = services().holds.revoke(grant_id, current_actor())
    except DecisionError as exc:
        return decision_error(exc)
    return jsonify({"revoked": public(grant)})


@bp.get("/decisions")
@api_auth_required
def decisions() -> Any:
    return jsonify({"decisions": [public(d) for d in services().holds.history()]})


def still_signed_in() -> bool:
    """Whether the reviewer of this (streaming) request is still signed in, checked anew:
    the session may have ended since the stream opened."""
    g.pop("actor", None)
    return current_actor() is not None


@bp.get("/events")
@api_auth_required
def events() -> Any:
    last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    last_id = int(last) if last and last.isdigit() else None
    stream = services().broker.stream(last_id, services().sse_lifetime, still_signed_in)
    return Response(stream_with_context(stream), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@bp.errorhandler(404)
def not_found(_exc: Any) -> Any:
    return api_error(404, "not_found", f"no API endpoint {request.path}")


@bp.errorhandler(405)
def wrong_method(_exc: Any) -> Any:
    return api_error(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")
