"""The pending queue: every held request, most urgent first, updated live.

Each row says what the request would do (a short summary of its body) as well as why
it is held, so a reviewer can triage without opening every hold.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from addons.holds.book import DecisionError
from review_ui.auth import login_required
from review_ui.display import body_summary
from review_ui.services import services

bp = Blueprint("queue", __name__, template_folder="templates")
NAV = [("queue.index", "Pending")]


#: Rows whose body summary is computed (each reads the hold's body once).
SUMMARIZED_MAX = 200


def pending() -> list[dict[str, Any]]:
    """The queue, each hold with ``body_summary``: the rule's ``summary`` line, else an
    automatic one from the body."""
    holds = services().holds
    rows = holds.queue()
    for index, hold in enumerate(rows):
        hold["body_summary"] = hold.get("summary_line") or ""  # the rule's own summary line wins
        if not hold["body_summary"] and index < SUMMARIZED_MAX:
            try:
                hold["body_summary"] = body_summary(holds.get(hold["flow_id"])["body"])
            except DecisionError:  # decided meanwhile: the next live update drops the row
                pass
    return rows


@bp.get("/")
@login_required
def index() -> Any:
    return render_template("queue.html", holds=pending())


@bp.get("/queue/rows")
@login_required
def rows() -> Any:
    """The table body alone; the page's script swaps it in when the live feed says so."""
    return render_template("_queue_rows.html", holds=pending())
