"""One recorded flow: request and response side by side, the audit trail, timings, replay."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, url_for

from addons.replay.addon import ReplayError
from review_ui.audit import data as audit_data
from review_ui.audit.api import start_replay
from review_ui.auth import login_required
from review_ui.highlight import highlight_json

bp = Blueprint("audit_flow", __name__, template_folder="templates")

#: How long the Replay button waits for the replay to finish (or be held) before answering.
REPLAY_WAIT_S = 15.0
BODY_PARTS = ("request", "response")


def recorded(flow_id: str) -> dict[str, Any]:
    row = audit_data.store_or_abort().flow(flow_id)
    if row is None:
        abort(404, f"No recorded flow {flow_id}. Flows are recorded when they complete: "
                   f"a request still held for approval is under /flows/{flow_id}.")
    return row


def masked_paths(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Where masking replaced values, per target (request/response), from the events."""
    found: dict[str, list[str]] = {}
    for event in events:
        if event["kind"] == "masked":
            detail = event.get("detail") or {}
            target = str(detail.get("target") or "response")
            found.setdefault(target, []).extend(str(p) for p in detail.get("paths") or [])
    return found


def raw_message(row: dict[str, Any], part: str) -> str:
    """The message as text, roughly as on the wire (bodies as recorded, decoded)."""
    if part == "request":
        first = f"{row.get('method')} {row.get('target') or row.get('path')} HTTP/1.1"
    else:
        first = f"HTTP/1.1 {row.get('status_code') or '---'}"
    headers = row.get(f"{part}_headers") or {}
    lines = [first, *(f"{k}: {v}" for k, v in headers.items()), ""]
    body = row.get(f"{part}_body")
    if body is None and row.get(f"{part}_body_blob") is not None:
        body = f"[{len(row[f'{part}_body_blob'])} bytes of binary data: download to see them]"
    return "\n".join(lines) + "\n" + (body or "")


def offsets(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event with its time since the first one (ms)."""
    if not events:
        return []
    start = events[0]["at"]
    return [{**e, "offset_ms": (e["at"] - start).total_seconds() * 1000 if e["at"] and start else None}
            for e in events]


@bp.get("/audit/flows/<flow_id>")
@login_required
def show(flow_id: str) -> Any:
    row = recorded(flow_id)
    store = audit_data.store_or_abort()
    events = store.events(flow_id)
    original = store.flow(row["replay_of"]) if row.get("replay_of") else None
    masked = masked_paths(events)
    return render_template(
        "audit/flow.html", flow=row, events=offsets(events), masked=masked,
        # Values masked with a hash, keep_last or null carry no marker: mark them by path.
        request_json=highlight_json(row.get("request_body"), masked.get("request", ())),
        response_json=highlight_json(row.get("response_body"), masked.get("response", ())),
        raw={part: raw_message(row, part) for part in BODY_PARTS},
        waits=audit_data.waits_of([flow_id]).get(flow_id, []),
        replays=audit_data.replays_of(flow_id),
        compare=audit_data.comparison(original, row) if original else None,
        original_missing=bool(row.get("replay_of")) and original is None,
    )


@bp.get("/audit/flows/<flow_id>/<part>-body")
@login_required
def download_body(flow_id: str, part: str) -> Any:
    if part not in BODY_PARTS:
        abort(404)
    row = recorded(flow_id)
    blob = row.get(f"{part}_body_blob")
    data = bytes(blob) if blob is not None else (row.get(f"{part}_body") or "").encode()
    suffix = "-truncated" if row.get(f"{part}_truncated") else ""
    # Always an attachment of an opaque type: a recorded body must never render as a page here.
    return Response(data, mimetype="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{flow_id}-{part}{suffix}.body"'})


@bp.get("/audit/flows/<flow_id>.json")
@login_required
def download_json(flow_id: str) -> Any:
    row = recorded(flow_id)
    document = {**audit_data.to_json_value(row), "events": audit_data.to_json_value(
        audit_data.store_or_abort().events(flow_id))}
    return Response(json.dumps(document, indent=2, ensure_ascii=False), mimetype="application/json",
                    headers={"Content-Disposition": f'attachment; filename="flow-{flow_id}.json"'})


@bp.post("/audit/flows/<flow_id>/replay")
@login_required
def replay(flow_id: str) -> Any:
    try:
        result = start_replay(flow_id, REPLAY_WAIT_S)
    except ReplayError as exc:
        flash(f"Not replayed: {exc.message}", "error")
        return redirect(url_for("audit_flow.show", flow_id=flow_id))
    new_id = result["flow_id"]
    if result["state"] == "held":
        flash(f"The replay is held for approval ({', '.join(result['rules']) or 'hold rule'}); "
              "it is recorded once a reviewer decides.", "warn")
        return redirect(url_for("review.show", flow_id=new_id))
    if result["state"] == "done" and audit_data.wait_recorded(new_id) is not None:
        flash(f"Replayed: {result['status_code'] or '---'} {result['decision']}.")
        return redirect(url_for("audit_flow.show", flow_id=new_id))
    flash(f"Replay {new_id} is still running; it appears under this flow's replays when it is recorded.",
          "warn")
    return redirect(url_for("audit_flow.show", flow_id=flow_id))
