"""Keep the gateway's native heap from creeping up under steady load (glibc only).

The 30-minute soak grew the gateway's RSS by ~5.7 MB/min. Measured (docs/performance.md,
"Memory over time"): the Python heap (tracemalloc) levels off within a minute and
DuckDB's own accounting (``duckdb_memory()``) stays under ~25 MB, rising and falling
with the WAL; what grows is memory glibc's allocator keeps after it was freed. Every
thread that allocates (the proxy loop, the recorder's writer, DuckDB's workers, one
werkzeug thread per review-UI request) may get its own malloc arena (up to 8 per core),
and freed chunks in an arena's middle are not returned to the system. Two remedies,
both no-ops where they do not apply (musl, macOS, a Python without ctypes):

* cap the number of arenas (``mallopt(M_ARENA_MAX, 2)``), like ``MALLOC_ARENA_MAX=2``;
  call it before threads start (the recorder does, when it loads);
* ``malloc_trim(0)`` now and then (the writer thread, every TRIM_EVERY_S seconds), which
  hands free pages inside every arena back to the kernel. It takes a few milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("portcullis.recorder")

M_ARENA_MAX = -8  # from <malloc.h>
ARENAS = 2
TRIM_EVERY_S = 30.0
#: Set to 0 to leave glibc's allocator alone (e.g. to compare in a soak run).
ENV = "PORTCULLIS_MALLOC_TUNING"


def _libc() -> ctypes.CDLL | None:
    if os.environ.get(ENV, "1") == "0":
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc has both; others may not
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; True if it took effect."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(M_ARENA_MAX, arenas))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX) refused")
    return ok


def trim() -> bool:
    """Return free heap pages to the kernel; True if any were released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
