"""The review page of one held flow, and the form that decides it.

Evidence first: what will happen (method, decoded URL, a summary of the body), why it
is held (the rule's reason, the agent's justification), the body itself, then the
decision; then the context a reviewer needs to judge it (this agent's recent flows, its
other pending holds, earlier decisions on the same rule) and the audit trail, in the
order things happened. A rejection needs a comment (the agent reads it) unless the rule
says ``reject_comment: optional``.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from addons.holds.book import DecisionError
from addons.holds.spec import format_duration, parse_duration
from review_ui.audit.sessions import identity_flows
from review_ui.auth import current_actor, login_required
from review_ui.display import body_summary, query_params
from review_ui.highlight import highlight_json, highlight_json_prefix
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


#: Bodies longer than this many lines start folded (the reviewer unfolds them).
FOLD_LINES = 40
#: Earlier decisions shown as context on the review page.
SIMILAR_MAX = 8
DENIED = ("blocked", "rejected", "expired", "abandoned", "error")


#: Decided holds of one identity under one rule, from the recording (earlier processes too).
RECORDED_DECISIONS_SQL = (
    "SELECT id, started_at, ended_at, method, scheme, host, port, path, query, decision, actor FROM flows "
    "WHERE identity IS NOT DISTINCT FROM ? AND list_contains(rules, ?) AND replay_of IS NULL "
    "AND decision IN ('approved', 'rejected', 'expired', 'abandoned') ORDER BY started_at DESC LIMIT ?"
)


def recorded_decisions(flow: dict[str, Any], known: set[str]) -> list[dict[str, Any]]:
    """The recording's decided holds like ``flow`` that this process's history lacks."""
    if not flow["rule"]:
        return []
    rows = services().query(RECORDED_DECISIONS_SQL, [flow["identity"], flow["rule"], SIMILAR_MAX]) or []
    found = []
    for row in rows:
        if row["id"] in known or row["id"] == flow["flow_id"]:
            continue
        default_port = (row["scheme"], row["port"]) in (("http", 80), ("https", 443))
        url = (f"{row['scheme']}://{row['host']}{'' if default_port else ':' + str(row['port'])}{row['path']}"
               + (f"?{row['query']}" if row["query"] else ""))
        found.append({"flow_id": row["id"], "status": row["decision"], "method": row["method"], "url": url,
                      "decided_by": row["actor"], "comment": "", "recorded": True,
                      "decided_at": (row["ended_at"] or row["started_at"]).replace(tzinfo=UTC).timestamp(),
                      "identical": False})
    return found


def similar_decisions(flow: dict[str, Any]) -> list[dict[str, Any]]:
    """Earlier decisions on this identity's requests under the same rule (this process's
    history, then the recording's), newest first, each marked ``identical`` when method,
    URL and body match (known for this process's holds only: the recording keeps no hash)."""
    found = _held_here(flow)
    if len(found) < SIMILAR_MAX:
        found += recorded_decisions(flow, {d["flow_id"] for d in found})[:SIMILAR_MAX - len(found)]
    return found


def _held_here(flow: dict[str, Any]) -> list[dict[str, Any]]:
    holds = services().holds
    found = []
    for earlier in holds.history(200):
        if earlier["flow_id"] == flow["flow_id"] or earlier["identity"] != flow["identity"] \
                or earlier["rule"] != flow["rule"]:
            continue
        same_request = earlier["method"] == flow["method"] and earlier["url"] == flow["url"]
        if same_request:
            try:
                same_request = holds.get(earlier["flow_id"])["body_sha256"] == flow["body_sha256"]
            except DecisionError:
                same_request = False
        found.append({**earlier, "identical": same_request})
        if len(found) >= SIMILAR_MAX:
            break
    return found


def agent_context(flow: dict[str, Any]) -> dict[str, Any]:
    """The identity's recent recorded flows (this session's marked) and its other pending holds."""
    recorded = identity_flows(flow["identity"])
    pending = [h for h in services().holds.queue()
               if h["identity"] == flow["identity"] and h["flow_id"] != flow["flow_id"]]
    return {"recorded": recorded, "pending": pending, "denied": DENIED}


def next_hold(flow_id: str) -> dict[str, Any] | None:
    """The most urgent other pending hold this reviewer may decide, for "next hold"."""
    holds, actor = services().holds, current_actor()
    for hold in holds.queue():
        if hold["flow_id"] != flow_id:
            try:
                if holds.may_decide(hold["flow_id"], actor)[0]:
                    return hold
            except DecisionError:
                continue
    return None


def timeline(events: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The hold's events in the order they happened, with what each means in words."""
    ordered = sorted(events, key=lambda e: e.get("at") or 0)
    return [{**e, "label": event_label(e, mode)} for e in ordered]


def event_label(event: dict[str, Any], mode: str) -> str:
    kind, detail = event["kind"], event.get("detail") or {}
    if kind == "completed" and mode == "async":
        return f"answered the agent {detail.get('status_code', 202)} (pending; it re-sends to collect)"
    if kind == "completed":
        return f"the agent received its response ({detail.get('status_code', '?')})"
    return kind.replace("_", " ") + VIA_LABELS.get(detail.get("via"), "")


#: Where a decision came from (its event's ``via``), as the audit trail says it.
VIA_LABELS = {"ui": " in the review UI", "api": " through the API", "cli": " from the terminal",
              "slack": " from Slack"}


def approved_message(hold: dict[str, Any]) -> str:
    """What really happened when a reviewer's approval went in."""
    if hold["status"] != "approved":
        left = hold["approvals_required"] - len(hold["approvals"])
        return f"Your approval is recorded; {left} more needed."
    if hold.get("mode") == "async":
        return ("Approved. Nothing is forwarded yet: the agent receives the upstream's answer when it "
                "re-sends the request with its approval id.")
    return "Approved; the gateway forwarded the request to the upstream."


def render_review(flow_id: str, error: str | None = None, status: int = 200, comment: str = "") -> Any:
    try:
        flow = flow_details(flow_id)
        allowed, why_not = may_decide(flow_id)
    except DecisionError as exc:
        abort(exc.status, exc.message)
    body, is_json = pretty_body(flow["body"])
    # A body cut at 64 KiB (or with a repeated key) is not a document: laid out token by token.
    highlighted = highlight_json(flow["body"]) if is_json else highlight_json_prefix(flow["body"])
    if highlighted is not None:
        body = str(highlighted)  # only its line count is used below
    return render_template(
        "review.html", flow=flow, body=body, body_is_json=is_json, body_html=highlighted,
        body_lines=body.count("\n") + 1 if body else 0, fold_lines=FOLD_LINES,
        summary=flow.get("summary_line") or body_summary(flow["body"]), query=query_params(flow["url"]),
        may_decide=allowed, why_not=why_not, grants=grant_choices(flow["max_grant_s"]),
        context=agent_context(flow), similar=similar_decisions(flow), next_hold=next_hold(flow_id),
        events=timeline(flow["events"], flow.get("mode", "wait")),
        recording=services().recorder() is not None,
        error=error, comment=comment, comment_max=COMMENT_MAX,
    ), status


@bp.get("/flows/<flow_id>")
@login_required
def show(flow_id: str) -> Any:
    return render_review(flow_id)


@bp.get("/flows/<flow_id>/body")
@login_required
def body(flow_id: str) -> Any:
    return held_body_response(flow_id)


@bp.get("/flows/<flow_id>/decide")
@login_required
def decide_page(flow_id: str) -> Any:
    """Where signing in again after a stale decision lands: the review page, to decide anew."""
    return redirect(url_for("review.show", flow_id=flow_id))


@bp.post("/flows/<flow_id>/decide")
@login_required
def decide(flow_id: str) -> Any:
    holds = services().holds
    action = request.form.get("action")
    comment = request.form.get("comment", "")[:COMMENT_MAX]
    try:
        if action == "reject":
            hold = holds.reject(flow_id, current_actor(), comment, via="ui")
            flash("Rejected. The agent " + ("receives a 403 with your comment when it re-sends the request."
                                            if hold.get("mode") == "async" else "received a 403 with your comment."))
        elif action in ("approve", "grant"):
            grant = parse_duration(request.form.get("grant", "")) if action == "grant" else None
            flash(approved_message(holds.approve(flow_id, current_actor(), comment, grant, via="ui")))
        else:
            abort(400, "unknown action")
    except DecisionError as exc:
        return render_review(flow_id, error=exc.message, status=exc.status, comment=comment)
    except ValueError as exc:
        return render_review(flow_id, error=f"grant: {exc}", status=400, comment=comment)
    return redirect(url_for("review.show", flow_id=flow_id))
