"""What the review UI's blueprints share: the approvals addon, reviewers, live feed, recorder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from review_ui.holds.live import Broker
from review_ui.reviewers import ReviewerStore

log = logging.getLogger("portcullis.review_ui")


@dataclass
class Services:
    approvals: Any  # addons.holds.addon.ApprovalsAddon
    reviewers: ReviewerStore
    broker: Broker = field(default_factory=Broker)
    #: Returns the recorder addon (with ``.store.query(sql, params)``) or None.
    recorder: Callable[[], Any] = lambda: None
    sse_lifetime: float = 300.0

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
