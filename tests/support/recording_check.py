"""Look for values in a recording: in the raw DuckDB file and in every row, via SQL."""

from __future__ import annotations

from pathlib import Path

import duckdb


def recorded_text(db: Path) -> str:
    """Every value of every table, as text (catches what compression hides from a grep)."""
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        ).fetchall()]
        return "\n".join(repr(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)


def find_in_recording(db: Path, values: list[str]) -> list[str]:
    """The values that occur in the file's bytes or in any recorded row."""
    raw = db.read_bytes()
    text = recorded_text(db)
    return [v for v in values if v.encode() in raw or v in text]
