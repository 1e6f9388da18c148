"""The flows table: every recorded flow, newest first, filtered by what is in the URL."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from review_ui.audit import data as audit_data
from review_ui.audit.data import Unavailable
from review_ui.audit.flowquery import DECISIONS, PAGE_SIZE, FilterError, FlowFilter
from review_ui.auth import login_required

bp = Blueprint("audit_flows", __name__, template_folder="templates")
NAV = [("audit_flows.index", "Flows")]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@bp.get("/audit/flows")
@login_required
def index() -> Any:
    flt = FlowFilter.from_args(request.args)
    after, before = request.args.get("after", ""), request.args.get("before", "")
    page, error, status = None, None, 200
    try:
        page = audit_data.flows_page(flt, after, before, PAGE_SIZE)
    except FilterError as exc:
        error, status = str(exc), 400
    except Unavailable as exc:
        error, status = exc.message, exc.status
    return render_template("audit/flows.html", flt=flt, page=page, error=error, decisions=DECISIONS,
                           methods=METHODS, paged=bool(after or before)), status
