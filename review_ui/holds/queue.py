"""The pending queue: every held request, most urgent first, updated live."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from review_ui.auth import login_required
from review_ui.services import services

bp = Blueprint("queue", __name__, template_folder="templates")
NAV = [("queue.index", "Pending")]


@bp.get("/")
@login_required
def index() -> Any:
    return render_template("queue.html", holds=services().holds.queue())


@bp.get("/queue/rows")
@login_required
def rows() -> Any:
    """The table body alone; the page's script swaps it in when the live feed says so."""
    return render_template("_queue_rows.html", holds=services().holds.queue())
