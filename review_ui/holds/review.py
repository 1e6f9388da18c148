"""The review page of one held flow, and the form that decides it."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from addons.holds.book import DecisionError
from addons.holds.spec import format_duration, parse_duration
from review_ui.audit.sessions import recent_flows
from review_ui.auth import current_actor, login_required
from review_ui.holds.api import COMMENT_MAX, flow_details, held_body_response, may_decide
from review_ui.services import services

bp = Blueprint("review", __name__, template_folder="templates")

GRANT_CHOICES = (300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)


def pretty_body(body: str) -> tuple[str, bool]:
    """The body re-indented when it is JSON; (text, is_json).

    A document with a repeated key is shown as sent: re-indenting it through a dict
    would keep only the last copy and hide the other from the reviewer.
    """

    def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ValueError("duplicate key")
        return result

    try:
        return json.dumps(json.loads(body, object_pairs_hook=refuse_duplicates), indent=2,
                          ensure_ascii=False), True
    except (ValueError, TypeError, RecursionError):
        return body, False


def grant_choices(max_grant: float | None) -> list[tuple[str, str]]:
    if not max_grant:
        return []
    choices = [s for s in GRANT_CHOICES if s < max_grant] + [max_grant]
    return [(format_duration(s), format_duration(s)) for s in choices]


def render_review(flow_id: str, error: str | None = None, status: int = 200) -> Any:
    try:
        flow = flow_details(flow_id)
        allowed, why_not = may_decide(flow_id)
    except DecisionError as exc:
        abort(exc.status, exc.message)
    body, is_json = pretty_body(flow["body"])
    session_flows = None
    if flow["session_id"]:
        session_flows = recent_flows(flow["identity"], flow["session_id"])  # keyed by both
    return render_template(
        "review.html", flow=flow, body=body, body_is_json=is_json,
        query=parse_qsl(urlsplit(flow["url"]).query, keep_blank_values=True),
        may_decide=allowed, why_not=why_not, grants=grant_choices(flow["max_grant_s"]),
        session_flows=session_flows, recording=services().recorder() is not None,
        error=error, comment_max=COMMENT_MAX,
    ), status


@bp.get("/flows/<flow_id>")
@login_required
def show(flow_id: str) -> Any:
    return render_review(flow_id)


@bp.get("/flows/<flow_id>/body")
@login_required
def body(flow_id: str) -> Any:
    return held_body_response(flow_id)


@bp.post("/flows/<flow_id>/decide")
@login_required
def decide(flow_id: str) -> Any:
    holds = services().holds
    action = request.form.get("action")
    comment = request.form.get("comment", "")[:COMMENT_MAX]
    try:
        if action == "reject":
            holds.reject(flow_id, current_actor(), comment)
            flash("Rejected. The agent received a 403 with your comment.")
        elif action in ("approve", "grant"):
            grant = parse_duration(request.form.get("grant", "")) if action == "grant" else None
            hold = holds.approve(flow_id, current_actor(), comment, grant)
            done = hold["status"] == "approved"
            flash("Approved; the request was forwarded." if done else
                  f"Your approval is recorded; {hold['approvals_required'] - len(hold['approvals'])} more needed.")
        else:
            abort(400, "unknown action")
    except DecisionError as exc:
        return render_review(flow_id, error=exc.message, status=exc.status)
    except ValueError as exc:
        return render_review(flow_id, error=f"grant: {exc}", status=400)
    return redirect(url_for("review.show", flow_id=flow_id))
