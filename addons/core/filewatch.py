"""One polling loop for every file the gateway watches (rules, identities), that never dies.

A watcher task that raises is gone for good, and asyncio only mentions it when the task
is garbage-collected, if ever: a rules edit with a recursive YAML alias once killed the
rules watcher, and every later edit, including identity revocations, was silently
ignored. So every poll runs inside a catch-all that logs the failure with the file it
was about, and the loop carries on with the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any


async def poll_forever(check: Callable[[], Any], interval: float, what: str, log: logging.Logger) -> None:
    """Call ``check()`` every ``interval`` seconds until cancelled; log (with ``what``,
    e.g. the file name) and survive anything it raises."""
    while True:
        await asyncio.sleep(interval)
        try:
            check()
        except Exception:  # noqa: BLE001 - the loop must outlive any one bad poll
            log.exception("reloading %s failed; the previous version stays in force, still watching", what)
