"""Export flows and events for a SIEM or a data lake, and analyst results to files.

``export(store, since, fmt, directory)`` writes ``flows.<ext>`` and ``events.<ext>``
(``ext`` = ``parquet`` or ``jsonl``) into the directory. Parquet files are plain DuckDB
output: ``SELECT * FROM 'DIR/flows.parquet'`` works in any DuckDB or Spark.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from recordings import schema
from recordings.store import Store

FORMATS = {"parquet": "parquet", "jsonl": "jsonl"}


def parse_since(value: str) -> datetime:
    """A date or ISO timestamp (UTC); raises ValueError with a useful message."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected a date like 2026-01-01 or a timestamp, got {value!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def export(store: Store, since: datetime | date, fmt: str, directory: str | Path) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use parquet or jsonl")
    if not isinstance(since, datetime):
        since = datetime.combine(since, time())
    out = Path(directory)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # the files are 0600 (store._staged)
    # A literal from a datetime we parsed ourselves: nothing user-typed reaches the SQL.
    literal = f"TIMESTAMP '{since.isoformat(sep=' ')}'"
    ext = FORMATS[fmt]
    flows_file, events_file = out / f"flows.{ext}", out / f"events.{ext}"
    flows = store.copy_to(
        f"SELECT * FROM flows WHERE started_at >= {literal} ORDER BY started_at", flows_file, fmt
    )
    events = store.copy_to(
        f'SELECT * FROM events WHERE "at" >= {literal} ORDER BY {schema.EVENT_ORDER}', events_file, fmt
    )
    return {"flows": flows, "events": events, "files": [str(flows_file), str(events_file)]}
