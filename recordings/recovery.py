"""On start: give every flow the previous run left unfinished its row. Nothing is dropped.

1. Journal entries (see :mod:`recordings.journal`) of flows that never reached the
   database become rows: ``received`` and ``held`` events, and for denials the full
   decision (the agent was told, so the record says exactly that).
2. Every flow with a ``received`` event but no ``flows`` row gets one: ``expired`` if it
   was held (its reviewer never decided), else ``error``; reason ``gateway_restart``.
3. Holds in async mode (the agent got ``202`` and the flow has its ``held`` row) that were
   still undecided get an ``expired`` event, reason ``gateway_restart``: the hold died
   with the process, as a clean shutdown would have said with ``gateway_shutdown``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import duckdb

from recordings.store import Store, micros

#: Request fields a journal ``received`` entry / event detail carries into a flows row.
REQUEST_FIELDS = ("method", "scheme", "host", "port", "path", "query", "client_addr")


def recover(store: Store, cur: duckdb.DuckDBPyConnection, journal: list[dict[str, Any]]) -> tuple[int, int]:
    """Returns (flows known only from the journal, other flows closed as gateway_restart):
    each unfinished flow counted once, so the two add up to the flows recovered. A flow
    only the journal knew is first given its ``received`` event, then closed by step 2."""
    from_journal = _from_journal(store, cur, journal)
    closed = _close_unfinished(store, cur) - from_journal
    return len(from_journal), len(closed) + _expire_async_holds(store, cur)


def _from_journal(store: Store, cur: duckdb.DuckDBPyConnection, journal: list[dict[str, Any]]) -> set[str]:
    received = {e["id"]: e for e in journal if e.get("k") == "received"}
    final = {e["id"]: e for e in journal if e.get("k") == "final"}
    held = {e["id"]: e for e in journal if e.get("k") == "held"}
    ids = list(received.keys() | final.keys() | held.keys())
    if not ids:
        return set()
    have_row = _ids(cur, "SELECT id FROM flows WHERE id IN (SELECT unnest($1::VARCHAR[]))", ids)
    have_event = _ids(cur, "SELECT flow_id FROM events WHERE kind = 'received' "
                           "AND flow_id IN (SELECT unnest($1::VARCHAR[]))", ids)
    have_held = _ids(cur, "SELECT flow_id FROM events WHERE kind = 'held' "
                          "AND flow_id IN (SELECT unnest($1::VARCHAR[]))", ids)
    seq = store.next_seq(cur)
    flows, events = [], []
    for flow_id in ids:
        if flow_id in have_row:
            continue
        request = received.get(flow_id, {})
        if request and flow_id not in have_event:
            events.append({"seq": seq + len(events), "flow_id": flow_id, "at": micros(request["at"]),
                           "actor": "gateway", "kind": "received",
                           "detail": json.dumps(_received_detail(request, store.scope))})
        if flow_id in held and flow_id not in have_held:
            events.append({"seq": seq + len(events), "flow_id": flow_id, "at": micros(held[flow_id]["at"]),
                           "actor": "gateway", "kind": "held", "detail": json.dumps({"from": "journal"})})
        decided = final.get(flow_id)
        if decided:
            flows.append({**{k: request.get(k) for k in REQUEST_FIELDS}, "id": flow_id,
                          "started_at": micros(request.get("at", decided["at"])),
                          "ended_at": micros(decided["at"]),
                          **{k: decided.get(k) for k in ("decision", "rules", "reason", "identity",
                                                         "session_id", "status_code", "error")}})
    store.insert(cur, flows, events)
    return {row["id"] for row in flows} | {row["flow_id"] for row in events}


def _received_detail(request: dict[str, Any], scope: str | None) -> dict[str, Any]:
    detail = {k: request.get(k) for k in REQUEST_FIELDS}
    if scope is not None:  # in a lake: this gateway's flow (Store.scope_filter)
        detail["gateway"] = scope
    return detail


def _close_unfinished(store: Store, cur: duckdb.DuckDBPyConnection) -> set[str]:
    unfinished = store.unfinished(cur)
    seq = store.next_seq(cur)
    flows, events = [], []
    for index, found in enumerate(unfinished):
        detail = json.loads(found["detail"] or "{}")
        decision = "expired" if found["held"] else "error"
        flows.append({**{k: detail.get(k) for k in REQUEST_FIELDS}, "id": found["flow_id"],
                      "started_at": found["at_us"], "decision": decision, "reason": "gateway_restart",
                      "rules": []})
        events.append({"seq": seq + index, "flow_id": found["flow_id"], "at": micros(time.time()),
                       "actor": "gateway", "kind": decision,
                       "detail": json.dumps({"reason": "gateway_restart"})})
    store.insert(cur, flows, events)
    return {row["id"] for row in flows}


#: Events that end a hold; a held flow without one was still pending.
HOLD_OUTCOMES = ("approved", "rejected", "expired", "abandoned")


def _expire_async_holds(store: Store, cur: duckdb.DuckDBPyConnection) -> int:
    scoped = "" if store.scope is None else (
        "AND EXISTS (SELECT 1 FROM events r WHERE r.flow_id = f.id AND r.kind = 'received' "
        f"{store.scope_filter('r')})")
    pending = [row[0] for row in cur.execute(
        "SELECT f.id FROM flows f WHERE f.decision = 'held' AND NOT EXISTS "
        "(SELECT 1 FROM events e WHERE e.flow_id = f.id AND e.kind IN (SELECT unnest($outcomes::VARCHAR[]))) "
        + scoped, {"outcomes": list(HOLD_OUTCOMES), **(store.scope_params() or {})},
    ).fetchall()]
    seq = store.next_seq(cur)
    now = micros(time.time())
    store.insert(cur, [], [{"seq": seq + i, "flow_id": flow_id, "at": now, "actor": "gateway",
                            "kind": "expired", "detail": json.dumps({"reason": "gateway_restart"})}
                           for i, flow_id in enumerate(pending)])
    return len(pending)


def _ids(cur: duckdb.DuckDBPyConnection, sql: str, ids: list[str]) -> set[str]:
    return {row[0] for row in cur.execute(sql, [ids]).fetchall()}
