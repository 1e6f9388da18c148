"""The grants page: every active grant with its full scope and each use, and Revoke.

A grant lets identical requests through without a reviewer, so a reviewer must be able
to tell two grants apart at a glance: identity, method and URL, the body's summary and
SHA-256, the bound headers, who granted it and why, when it expires, and every use
(linked to the recorded flow). The same scope is shown on the approved hold's page
(``_grant_scope.html``, included there); Revoke works from both and returns to the page
it came from.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from addons.holds.book import DecisionError
from review_ui.auth import current_actor, login_required
from review_ui.services import services

bp = Blueprint("grants", __name__, template_folder="templates")
NAV = [("grants.index", "Grants")]


@bp.app_context_processor
def grant_lookup() -> dict[str, Any]:
    """``grant_of(id)`` for templates (the approved page): a live grant, or None."""

    def grant_of(grant_id: str | None) -> dict[str, Any] | None:
        if not grant_id:
            return None
        try:
            return services().holds.grant(grant_id)
        except DecisionError:
            return None

    return {"grant_of": grant_of}


@bp.get("/grants")
@login_required
def index() -> Any:
    return render_template("grants.html", grants=services().holds.grants())


def _back(default: str) -> str:
    """Where Revoke returns: a path on this site (never off-site), else ``default``."""
    target = request.form.get("next", "")
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else default


@bp.post("/grants/<grant_id>/revocation")
@login_required
def revoke(grant_id: str) -> Any:
    back = _back(url_for("grants.index"))
    try:
        grant = services().holds.revoke(grant_id, current_actor())
    except DecisionError as exc:
        flash(exc.message, "error")
        return redirect(back)
    flash(f"Grant {grant['id']} for {grant['identity']}: {grant['method']} {grant['url']} revoked "
          f"after {grant['uses']} uses; identical requests are held again.")
    return redirect(back)
