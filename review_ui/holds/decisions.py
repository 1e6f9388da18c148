"""Recent decisions (who decided what) and the active grants, with Revoke."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, url_for

from addons.holds.book import DecisionError
from review_ui.auth import current_actor, login_required
from review_ui.services import services

bp = Blueprint("decisions", __name__, template_folder="templates")
NAV = [("decisions.index", "Decisions")]

DECISION_KINDS = ("approved", "rejected", "expired", "abandoned", "grant_used", "grant_revoked")
RECORDED_DECISIONS_SQL = (
    'SELECT flow_id, "at", kind, actor, detail FROM events WHERE kind IN ({}) '
    'ORDER BY "at" DESC LIMIT 200'.format(", ".join("?" * len(DECISION_KINDS)))
)


@bp.get("/decisions")
@login_required
def index() -> Any:
    holds = services().holds
    return render_template(
        "decisions.html",
        decisions=holds.history(),
        grants=holds.grants(),
        recorded=services().query(RECORDED_DECISIONS_SQL, DECISION_KINDS),
    )


@bp.post("/grants/<grant_id>/revoke")
@login_required
def revoke(grant_id: str) -> Any:
    try:
        grant = services().holds.revoke(grant_id, current_actor())
        flash(f"Grant for {grant['method']} {grant['url']} revoked; identical requests are held again.")
    except DecisionError as exc:
        flash(exc.message, "error")
    return redirect(url_for("decisions.index"))
