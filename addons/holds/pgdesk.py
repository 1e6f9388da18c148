"""Reviewer decisions on a shared (PostgreSQL) hold book: one transaction per decision.

Any gateway's review UI, API, Slack callback or CLI may decide any hold of the cluster,
and two reviewers on two gateways may click at the same moment. So a decision is not
made on this gateway's mirror: :class:`ClusterDesk` locks the hold's row
(``SELECT ... FOR UPDATE``), rebuilds the record from it, lets a
:class:`~addons.holds.book.HoldBook` over just that row apply the book's own rules
(who may decide, N approvals, grants), writes the result and its events back and
commits with ``NOTIFY``; only then does it hand the committed row to this gateway's
mirror (on the loop, which also announces the events here). The gateway holding the
agent's connection learns of it from the notification (addons.holds.pgstore).

This runs on the calling thread (a werkzeug request thread, the notification pool),
never on the event loop: blocking there on PostgreSQL is fine. Reads stay the desk's
(the mirror, on the loop).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from addons.core.events import Event, EventBus
from addons.core.loopbridge import LoopBridge
from addons.holds.book import Actor, DecisionError, Grant, HoldBook, HoldRecord
from addons.holds.desk import FeedListener, HoldDesk
from addons.holds.pgcodec import decode, encode
from addons.holds.pgdriver import Jsonb, psycopg
from addons.holds.pgschema import CHANNEL
from addons.holds.pgstore import PgHoldStore

#: How long a decision waits for a hold another gateway listed but has not committed yet.
COMMIT_WAIT_S = 2.0

log = logging.getLogger("portcullis.state")


class _OneHold:
    """A HoldStore over the one locked row a decision is about."""

    def __init__(self, hold: HoldRecord) -> None:
        self.hold = hold
        self.new_grants: list[Grant] = []

    def put(self, hold: HoldRecord) -> None:
        self.hold = hold

    def get(self, hold_id: str) -> HoldRecord | None:
        return self.hold if hold_id == self.hold.id else None

    def pending(self) -> list[HoldRecord]:
        return [self.hold] if self.hold.decision is None else []

    def decided(self, limit: int) -> list[HoldRecord]:
        return [self.hold] if self.hold.decision is not None and limit > 0 else []

    def put_grant(self, grant: Grant) -> None:
        self.new_grants.append(grant)

    def get_grant(self, grant_id: str) -> Grant | None:
        return None

    def remove_grant(self, grant_id: str) -> Grant | None:
        return None

    def grants(self) -> list[Grant]:
        return []

    def add_event(self, hold_id: str, event: dict[str, Any]) -> None:
        pass

    def events(self, hold_id: str) -> list[dict[str, Any]]:
        return []


class _FeedView:
    """What HoldDesk.watch reads of a book (``bus``, ``find``), over the store's feed of
    other gateways' holds, so that their changes reach this UI without being recorded or
    notified here."""

    def __init__(self, book: HoldBook, store: PgHoldStore) -> None:
        self.bus, self.find = store.remote_bus, book.find


class ClusterDesk(HoldDesk):
    """A HoldDesk whose decisions commit in PostgreSQL first (see the module docstring).

    Until the store is shared (``--state`` not given), it is the plain desk.
    """

    def __init__(self, book: HoldBook, bridge: LoopBridge, store: PgHoldStore,
                 secrets_of: Callable[[str], set[str]] = lambda _hold_id: set()) -> None:
        super().__init__(book, bridge, secrets_of)
        self.store = store

    def approve(self, flow_id: str, actor: Actor, comment: str = "",
                grant_s: float | None = None, via: str | None = None) -> dict[str, Any]:
        if not self.store.shared:
            return super().approve(flow_id, actor, comment, grant_s, via)
        return self._decide(flow_id, lambda book: book.approve(flow_id, actor, comment, grant_s, via))

    def reject(self, flow_id: str, actor: Actor, comment: str = "", via: str | None = None) -> dict[str, Any]:
        if not self.store.shared:
            return super().reject(flow_id, actor, comment, via)
        return self._decide(flow_id, lambda book: book.reject(flow_id, actor, comment, via))

    def watch(self, listener: FeedListener) -> Callable[[], None]:
        """The live feed of this gateway's holds, and of every other gateway's too."""
        local = super().watch(listener)
        remote = HoldDesk(_FeedView(self.book, self.store), self.bridge).watch(listener)  # type: ignore[arg-type]

        def unwatch() -> None:
            local()
            remote()

        return unwatch

    def _wait_committed(self, hold_id: str) -> None:
        """A hold the reviewer saw listed by another gateway (its mirror shows its own holds
        at once) may not be committed yet: its writer commits in batches. Behind a load
        balancer the decision can reach this gateway first (a 404 ``unknown_flow`` for a
        listed hold, tests/test_workers_haproxy under load); wait for the row, briefly."""
        deadline = time.monotonic() + COMMIT_WAIT_S
        while True:
            try:
                with self.store.pool.connection() as conn:
                    if conn.execute("SELECT 1 FROM portcullis_holds WHERE id = %s", (hold_id,)).fetchone():
                        return
            except psycopg.Error:
                return  # the decision's own transaction reports the outage
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _decide(self, flow_id: str, action: Callable[[HoldBook], HoldRecord]) -> dict[str, Any]:
        assert self.store.pool is not None
        events: list[Event] = []
        refused: DecisionError | None = None
        # A hold this gateway took a moment ago may still be in its writer's queue.
        self.store.flush()
        self._wait_committed(flow_id[:200])
        try:
            with self.store.pool.connection() as conn, conn.transaction():
                row = conn.execute("SELECT record FROM portcullis_holds WHERE id = %s FOR UPDATE",
                                   (flow_id[:200],)).fetchone()
                if row is None:
                    raise DecisionError(404, "unknown_flow", f"no held flow {flow_id}")
                one = _OneHold(decode(HoldRecord, row[0]))
                bus = EventBus()
                book = HoldBook(one, bus, self.book.clock)
                bus.subscribe(events.append)
                try:
                    action(book)
                except DecisionError as exc:
                    refused = exc  # its audit event (if any) is still committed
                hold = one.hold
                if refused is None:
                    conn.execute(
                        "UPDATE portcullis_holds SET record = %s, decision = %s, decided_at = %s, "
                        "collected = %s, writer = %s, rev = nextval('portcullis_rev'), "
                        "committed_at = clock_timestamp() WHERE id = %s",
                        (Jsonb(encode(hold)), hold.decision, hold.decided_at, hold.collected,
                         self.store.gateway_id, hold.id))
                for grant in one.new_grants:
                    conn.execute("INSERT INTO portcullis_grants (id, flow_id, record, expires_at, writer) "
                                 "VALUES (%s, %s, %s, %s, %s)",
                                 (grant.id, grant.flow_id, Jsonb(encode(grant)), grant.expires_at,
                                  self.store.gateway_id))
                for event in events:
                    conn.execute("INSERT INTO portcullis_hold_events (hold_id, gateway, event) VALUES (%s, %s, %s)",
                                 (event.flow_id, self.store.gateway_id,
                                  Jsonb(encode({"kind": event.kind, "at": event.at, "actor": event.actor,
                                                "detail": event.detail}))))
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.store.gateway_id))
        except psycopg.Error as exc:
            log.warning("decision on %s not committed: %s", flow_id, exc)
            raise DecisionError(503, "shared_state_unavailable",
                                "the shared state (PostgreSQL) cannot be reached; the hold was not decided, "
                                "try again shortly") from None
        try:
            self._call(self.store.apply_committed, hold, one.new_grants, events)
        except DecisionError as exc:  # committed: the mirror catches up from PostgreSQL
            log.warning("decision on %s committed, mirror not updated now: %s", flow_id, exc.message)
        if refused is not None:
            raise refused
        return hold.summary()
