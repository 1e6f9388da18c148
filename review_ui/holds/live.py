"""The live feed behind ``/api/events``: a small thread-safe publish/subscribe hub.

Events are numbered; the last ``backlog`` are kept so that a browser reconnecting with
``Last-Event-ID`` receives what it missed while it was away.

A stream is authenticated per message, not only when it opens: ``allowed`` is asked
before every event and keepalive, and once the reviewer's session has ended (signed out
in another tab, expired, removed from the reviewers file) the stream says
``event: signed_out`` and ends, so a page can stop claiming to be live.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

KEEPALIVE_S = 15.0
#: How often a quiet stream re-checks that its reviewer is still signed in.
AUTH_CHECK_S = 1.0
#: The last message of a stream whose reviewer is no longer signed in.
SIGNED_OUT = "event: signed_out\ndata: {}\n\n"


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

    def stream(self, last_id: int | None, lifetime: float,
               allowed: Callable[[], bool] = lambda: True) -> Iterator[str]:
        """SSE text for one client; ends after ``lifetime`` seconds (the client reconnects),
        or with ``event: signed_out`` as soon as ``allowed()`` is false."""
        inbox: queue.Queue = queue.Queue()
        with self._lock:
            missed = [item for item in self._backlog if last_id is not None and item[0] > last_id]
            current = self._seq
            self._subscribers.add(inbox)
        try:
            yield f"retry: 500\nid: {last_id if last_id is not None else current}\nevent: hello\ndata: {{}}\n\n"
            for item in missed:
                if not allowed():
                    yield SIGNED_OUT
                    return
                yield _format(item)
            deadline = time.monotonic() + lifetime
            quiet_since = time.monotonic()
            while (left := deadline - time.monotonic()) > 0:
                try:
                    item = inbox.get(timeout=min(AUTH_CHECK_S, left))
                except queue.Empty:
                    item = None
                if not allowed():
                    yield SIGNED_OUT
                    return
                if item is not None:
                    yield _format(item)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
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
