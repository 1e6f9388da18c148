"""What the audit pages and the audit API share: reading the recording, starting replays.

The recording is read through the recorder's :class:`recordings.store.Store` (read-only,
thread-safe). Replays go to the replay addon, which hands them to the proxy's event loop.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from flask import abort

from addons.replay.addon import ReplayError
from review_ui.audit.flowquery import FilterError, FlowFilter, Page, make_page, page_query
from review_ui.audit.jsondiff import diff_bodies
from review_ui.services import services

#: How long the UI waits for a replay's row to reach the recording before showing it.
RECORDED_WAIT_S = 5.0
SESSION_FLOWS_MAX = 5000


class Unavailable(ReplayError):
    """Recording is off or the replay addon is missing: a (status, code, message) like ReplayError."""


def store() -> Any:
    """The recording store, or :class:`Unavailable` when recording is off."""
    recorder = services().recorder()
    found = getattr(recorder, "store", None)
    if found is None:
        raise Unavailable(503, "recording_off",
                          "recording is off: start the gateway with --db FILE to browse flows")
    return found


def store_or_abort() -> Any:
    try:
        return store()
    except Unavailable as exc:
        abort(exc.status, exc.message)


def replayer() -> Any:
    """The running gateway's replay addon (wired by make_addons through the UI server)."""
    addon = services().replayer()
    if addon is None:
        raise Unavailable(503, "replay_unavailable", "replay needs the running gateway's replay addon")
    return addon


def rows_of(columns: list[str], rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


def flows_page(flt: FlowFilter, after: str = "", before: str = "", limit: int = 50) -> Page:
    """One page of the flows table (raises FilterError for bad filters)."""
    query = page_query(flt, after=after, before=before, limit=limit)
    columns, rows = store().query(query.sql, query.params)
    return make_page(query, rows_of(columns, rows), had_cursor=bool(after or before))


def session_where(session_id: str = "", identity: str = "", client: str = "") -> tuple[str, list[Any]]:
    """A session is a session id, or (without one) an identity on one client connection."""
    if session_id:
        return "session_id = ?", [session_id]
    if identity and client:
        return "session_id IS NULL AND replay_of IS NULL AND identity = ? AND client_addr = ?", [identity, client]
    raise FilterError("a session needs id=SESSION_ID, or identity= and client= (address:port)")


def session_flows(session_id: str = "", identity: str = "", client: str = "") -> list[dict[str, Any]]:
    where, params = session_where(session_id, identity, client)
    columns, rows = store().query(
        "SELECT id, started_at, ended_at, duration_ms, identity, client_addr, session_id, method, host, "
        "port, path, query, status_code, decision, rules, reason, error, actor, replay_of, masked "
        f"FROM flows WHERE {where} ORDER BY started_at, id LIMIT {SESSION_FLOWS_MAX}", params)
    return rows_of(columns, rows)


def waits_of(flow_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Approval waits per flow: from ``held`` to the decision, with who decided."""
    if not flow_ids:
        return {}
    columns, rows = store().query(
        'SELECT flow_id, kind, "at", actor, detail FROM events WHERE flow_id IN (SELECT unnest(?)) '
        "AND kind IN ('held', 'approved', 'rejected', 'expired', 'abandoned') ORDER BY \"at\", gateway, seq",
        [flow_ids])
    waits: dict[str, list[dict[str, Any]]] = {}
    for event in rows_of(columns, rows):
        spans = waits.setdefault(event["flow_id"], [])
        if event["kind"] == "held":
            spans.append({"start": event["at"], "end": None, "outcome": None, "by": None})
        elif spans and spans[-1]["end"] is None:
            spans[-1].update(end=event["at"], outcome=event["kind"], by=event["actor"])
    return waits


def replays_of(flow_id: str) -> list[dict[str, Any]]:
    columns, rows = store().query(
        "SELECT id, started_at, actor, status_code, decision, rules FROM flows WHERE replay_of = ? "
        "ORDER BY started_at DESC LIMIT 50", [flow_id])
    return rows_of(columns, rows)


def wait_recorded(flow_id: str, timeout: float = RECORDED_WAIT_S) -> dict[str, Any] | None:
    """The flow's row once the recorder has written it (it writes in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        row = store().flow(flow_id)
        if row is not None or time.monotonic() >= deadline:
            return row
        time.sleep(0.05)


def comparison(original: dict[str, Any], replay: dict[str, Any]) -> dict[str, Any]:
    """The replay next to the original: statuses, decisions and the JSON diff of responses."""
    changes = diff_bodies(original.get("response_body"), replay.get("response_body"))
    return {
        "original": original, "replay": replay,
        "changes": [c.to_json() for c in changes] if changes is not None else None,
        "same_status": original.get("status_code") == replay.get("status_code"),
    }


def request_line(row: dict[str, Any]) -> str:
    target = (row.get("path") or "") + (f"?{row['query']}" if row.get("query") else "")
    return f"{row.get('method')} {row.get('host')}{target}"


def to_json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    if isinstance(value, bytes | bytearray | memoryview):
        return None  # binary bodies are downloads, not JSON
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value
