"""An in-memory hold book behind a real holds desk, for in-process tests of the review UI.

The desk runs every call on an event loop, as in the gateway; here the loop runs in a
daemon thread of the test process (the Flask test client calls from the test's thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from addons.core.events import EventBus
from addons.core.loopbridge import LoopBridge
from addons.holds.book import HoldBook
from addons.holds.desk import HoldDesk


@contextmanager
def running_desk(book: HoldBook | None = None) -> Iterator[HoldDesk]:
    """A desk over ``book`` (a fresh in-memory one by default) with its loop running."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-hold-desk-loop", daemon=True)
    thread.start()
    bridge = LoopBridge()
    bridge.attach(loop)
    try:
        yield HoldDesk(book if book is not None else HoldBook(bus=EventBus()), bridge)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def idle_desk() -> HoldDesk:
    """A desk whose gateway is not running: reads and decisions answer 503."""
    return HoldDesk(HoldBook(bus=EventBus()), LoopBridge())


_shared: HoldDesk | None = None


def shared_desk() -> HoldDesk:
    """One running desk over an empty book for the whole test process (its loop is a
    daemon thread), for tests of UI pages that only need holds to be readable."""
    global _shared
    if _shared is None:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="test-shared-desk-loop", daemon=True).start()
        bridge = LoopBridge()
        bridge.attach(loop)
        _shared = HoldDesk(HoldBook(bus=EventBus()), bridge)
    return _shared
