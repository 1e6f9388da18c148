"""Where the hold book keeps its holds, grants and each hold's events: the backend seam.

:class:`HoldStore` is all :class:`~addons.holds.book.HoldBook` asks of a backend: put and
get records, list pending and decided holds, keep grants and a hold's audit events.
The rules (who may decide, when a hold is decided, what a grant covers) are the book's,
never the store's, so a second backend (PostgreSQL, shared by several gateways) has
only storage to implement. :class:`MemoryHoldStore` is the default: this process's
memory, bounded (the oldest decided holds are forgotten first).

Records are handed out as the objects the book mutates; a persistent backend returns
copies and the book writes each change back with ``put``/``put_grant``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from addons.holds.book import Grant, HoldRecord

#: Decided holds remembered for the review pages (pending holds are never forgotten).
HISTORY_MAX = 1000
#: Audit events kept per hold for the review page (the recording has all of them).
EVENTS_PER_HOLD = 200


class HoldStore(Protocol):
    """Storage for holds, grants and hold events. Called on one thread (the event loop)."""

    def put(self, hold: HoldRecord) -> None:
        """Insert or replace a hold."""

    def get(self, hold_id: str) -> HoldRecord | None: ...

    def pending(self) -> list[HoldRecord]:
        """Every undecided hold, oldest first."""
        ...

    def decided(self, limit: int) -> list[HoldRecord]:
        """The ``limit`` most recently decided holds, newest first."""
        ...

    def put_grant(self, grant: Grant) -> None: ...

    def get_grant(self, grant_id: str) -> Grant | None: ...

    def remove_grant(self, grant_id: str) -> Grant | None: ...

    def grants(self) -> list[Grant]:
        """Every grant not yet removed (expired ones included; the book drops those)."""
        ...

    def add_event(self, hold_id: str, event: dict[str, Any]) -> None: ...

    def events(self, hold_id: str) -> list[dict[str, Any]]: ...


class MemoryHoldStore:
    """The default store: this process's memory (holds do not survive a restart)."""

    def __init__(self, history_max: int = HISTORY_MAX) -> None:
        self.history_max = history_max
        self._holds: OrderedDict[str, HoldRecord] = OrderedDict()
        self._grants: dict[str, Grant] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}

    def put(self, hold: HoldRecord) -> None:
        self._holds[hold.id] = hold
        self._trim()

    def get(self, hold_id: str) -> HoldRecord | None:
        return self._holds.get(hold_id)

    def pending(self) -> list[HoldRecord]:
        return [h for h in self._holds.values() if h.decision is None]

    def decided(self, limit: int) -> list[HoldRecord]:
        done = [h for h in self._holds.values() if h.decision is not None]
        done.sort(key=lambda h: h.decided_at or 0, reverse=True)
        return done[:limit]

    def put_grant(self, grant: Grant) -> None:
        self._grants[grant.id] = grant

    def get_grant(self, grant_id: str) -> Grant | None:
        return self._grants.get(grant_id)

    def remove_grant(self, grant_id: str) -> Grant | None:
        return self._grants.pop(grant_id, None)

    def grants(self) -> list[Grant]:
        return list(self._grants.values())

    def add_event(self, hold_id: str, event: dict[str, Any]) -> None:
        if hold_id not in self._holds:
            return
        kept = self._events.setdefault(hold_id, [])
        if len(kept) < EVENTS_PER_HOLD:
            kept.append(event)

    def events(self, hold_id: str) -> list[dict[str, Any]]:
        return list(self._events.get(hold_id, ()))

    def _trim(self) -> None:
        while len(self._holds) > self.history_max:
            oldest = next((k for k, h in self._holds.items() if h.decision is not None), None)
            if oldest is None:
                return
            del self._holds[oldest]
            self._events.pop(oldest, None)
