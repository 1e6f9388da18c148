"""The live feed behind ``/api/events``: a small thread-safe publish/subscribe hub.

Events are numbered; the last ``backlog`` are kept so that a browser reconnecting with
``Last-Event-ID`` receives what it missed while it was away.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

KEEPALIVE_S = 15.0


class Broker:
    def __init__(self, backlog: int = 500) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._backlog: deque[tuple[int, str, str]] = deque(maxlen=backlog)
        self._subscribers: set[queue.Queue] = set()

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        payload = json.dumps(data, ensure_ascii=False, default=str)
        with self._lock:
            self._seq += 1
            item = (self._seq, kind, payload)
            self._backlog.append(item)
            for subscriber in self._subscribers:
                subscriber.put_nowait(item)

    def stream(self, last_id: int | None, lifetime: float) -> Iterator[str]:
        """SSE text for one client; ends after ``lifetime`` seconds (the client reconnects)."""
        inbox: queue.Queue = queue.Queue()
        with self._lock:
            missed = [item for item in self._backlog if last_id is not None and item[0] > last_id]
            current = self._seq
            self._subscribers.add(inbox)
        try:
            yield f"retry: 500\nid: {last_id if last_id is not None else current}\nevent: hello\ndata: {{}}\n\n"
            for item in missed:
                yield _format(item)
            deadline = time.monotonic() + lifetime
            while (left := deadline - time.monotonic()) > 0:
                try:
                    item = inbox.get(timeout=min(KEEPALIVE_S, left))
                except queue.Empty:
                    yield ": keepalive\n\n"
                    continue
                yield _format(item)
        finally:
            with self._lock:
                self._subscribers.discard(inbox)

    @property
    def seq(self) -> int:
        """The id of the last event published (pages render it so the feed starts there)."""
        return self._seq


def _format(item: tuple[int, str, str]) -> str:
    seq, kind, payload = item
    return f"id: {seq}\nevent: {kind}\ndata: {payload}\n\n"
