"""Query results as text: an aligned table, CSV or JSON.

One renderer for every place an analyst reads a result — ``portcullis sql`` prints it and
the review UI's SQL page downloads its CSV through it — so a cell looks the same in both.
It lives with the recording, below both callers, so the UI does not import the CLI.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

#: Table cells longer than this are cut (use csv/json for whole values).
MAX_CELL = 80


def render(columns: list[str], rows: list[list[Any]], fmt: str) -> str:
    """``rows`` under ``columns`` as ``fmt`` ("json", "csv"; anything else: a table)."""
    if fmt == "json":
        return json.dumps([dict(zip(columns, row, strict=True)) for row in rows],
                          ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows([[_cell(value) for value in row] for row in rows])
        return out.getvalue()
    return _table(columns, rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cut(_cell(v) if v is not None else "NULL") for v in row] for row in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
        *(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells),
        f"({len(rows)} row{'s' if len(rows) != 1 else ''})",
    ]
    return "\n".join(lines) + "\n"


def _cut(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
