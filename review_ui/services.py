"""What the review UI's blueprints share: the holds desk, reviewers, live feed, recorder.

The UI reaches holds only through :class:`~addons.holds.desk.HoldDesk` (thread safe,
plain dicts); it never touches the hold book or the proxy's event loop itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app

from review_ui.holds.live import Broker

if TYPE_CHECKING:
    from addons.holds.desk import HoldDesk
from review_ui.reviewers import ReviewerStore

log = logging.getLogger("portcullis.review_ui")


@dataclass
class Services:
    holds: HoldDesk
    reviewers: ReviewerStore
    broker: Broker = field(default_factory=Broker)
    #: Returns the recorder addon (with ``.store.query(sql, params)``) or None.
    recorder: Callable[[], Any] = lambda: None
    sse_lifetime: float = 300.0
    #: Returns the replay addon, or None (``review_ui.audit.data.replayer`` may use it).
    replayer: Callable[[], Any] = lambda: None
    #: Stops the live feed's subscription to the desk (``close_app``).
    unwatch: Callable[[], None] = lambda: None

    def query(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]] | None:
        """Rows from the recording as dicts, or None when recording is off or fails."""
        recorder = self.recorder()
        store = getattr(recorder, "store", None)
        if store is None:
            return None
        try:
            columns, rows = store.query(sql, list(params))
        except Exception as exc:  # noqa: BLE001 - the UI degrades; the data path is unaffected
            log.warning("recording query failed: %s", exc)
            return None
        return [dict(zip(columns, row, strict=False)) for row in rows]


def services() -> Services:
    return current_app.extensions["portcullis"]
