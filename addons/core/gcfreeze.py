"""Move what the gateway built at startup out of the cyclic garbage collector's way.

CPython's collector scans every tracked object of a generation; its full collections
(triggered as flows' objects survive the young generations) rescanned the ~100,000
objects that mitmproxy, DuckDB, the rules, the UI and the imports create at startup and
that live as long as the process. Measured with bench/cpusplit.py (16 clients, 10 rules,
issue 18): ~64 us of GC per request, about 6% of the gateway's CPU, and recording (its
snapshots wait up to 100 ms for the recording process) made it more.

:class:`GcFreezeAddon` runs ``gc.collect()`` then ``gc.freeze()`` once, on the loop turn
after ``running``: everything alive then goes to the permanent generation,
which collections skip. What is created later (flows, a reloaded rules file) is collected
as before; a frozen object that later becomes cyclic garbage is not reclaimed (startup
state does not), reference counting still frees the rest. ``PORTCULLIS_GC_FREEZE=0``
leaves the collector alone (for comparison runs).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

log = logging.getLogger("portcullis")

ENV = "PORTCULLIS_GC_FREEZE"


class GcFreezeAddon:
    name = "portcullis_gc_freeze"

    def __init__(self) -> None:
        self.frozen = 0  # objects moved to the permanent generation
        self._scheduled = False

    def running(self) -> None:
        if self._scheduled or os.environ.get(ENV, "1") == "0":
            return
        self._scheduled = True
        # On the loop's next turn, so that the READY banner (whose ``running`` comes after
        # every Portcullis addon's) is not held up by the collection: ~0.05 s of CPU, more
        # wall time under load, on every start.
        asyncio.get_running_loop().call_soon(self._freeze)

    def _freeze(self) -> None:
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        log.debug("gc: %d startup objects frozen", self.frozen)
