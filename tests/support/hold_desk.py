"""An in-memory hold book behind a real holds desk, for in-process tests of the review UI.

The desk runs every call on an event loop, as in the gateway; here the loop runs in a
daemon thread of the test process (the Flask test client calls from the test's thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from addons.core.events import EventBus
from addons.core.loopbridge import LoopBridge
from addons.holds.binding import RequestPrint, VerdictPrint
from addons.holds.book import HoldBook, HoldRecord
from addons.holds.desk import HoldDesk
from addons.holds.spec import HoldSpec

#: A refund request's print and the verdict that held it (the prints are plain data).
PRINT = RequestPrint("POST", "https://api.example/v1/refunds", "ab" * 32, (("content-type", "cd" * 32),))
VERDICT = VerdictPrint("hold", "refunds", ("refunds",), ("finance-leads",), 1, ())


def hold_spec(**overrides: Any) -> HoldSpec:
    """The spec of a refunds hold: finance leads, one approval, 5 minutes, grants allowed for
    its POST (``grant_unsafe_methods``) when ``grant`` is given; ``overrides`` win."""
    fields: dict[str, Any] = dict(
        rule="refunds", reason="Refunds need a finance lead", approvers=frozenset({"finance-leads"}),
        approvals_required=1, timeout=300.0, escalate_after=None, escalate_to=frozenset(), grant=None,
        grant_unsafe_methods=True)  # a POST: a grant is offered only because the rule says so
    fields.update(overrides)
    return HoldSpec(**fields)


def hold_record(flow_id: str, now: float, identity: str = "billing-agent", binding: RequestPrint = PRINT,
                verdict: VerdictPrint = VERDICT, body: bytes = b'{"amount": 900}', **spec: Any) -> HoldRecord:
    """A pending refund hold as the addon would open it."""
    held = hold_spec(**spec)
    return HoldRecord(
        id=flow_id, identity=identity, spec=held, method=binding.method, url=binding.url,
        headers=[("Content-Type", "application/json")], body=body.decode(), body_truncated=False,
        body_warning=None, body_size=len(body), body_sha256=binding.body_sha256, binding=binding,
        verdict=verdict, created=now, deadline=now + held.timeout, raw=body)


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
