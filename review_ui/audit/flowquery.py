"""The flows table's filters and keyset pagination, as parameterised SQL.

Filters come from the URL (so a filtered view is a link) and only ever become ``?``
parameters; column names and operators come from this module alone.

Pages are ordered newest first by ``(started_at, id)``. A page cursor is the last row's
key: the next page is everything strictly older, the previous page everything strictly
newer (read ascending, then turned around). Unlike ``OFFSET`` this costs the same on
page 1 and page 10,000, and rows arriving meanwhile do not shift the pages.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

PAGE_SIZE = 50
PAGE_SIZE_MAX = 500
#: Columns the flows table shows (never the bodies: those are for the detail page).
LIST_COLUMNS = ("id", "started_at", "duration_ms", "identity", "session_id", "client_addr", "method",
                "scheme", "host", "port", "path", "query", "status_code", "decision", "rules", "reason",
                "actor", "replay_of", "masked")
DECISIONS = ("allowed", "blocked", "approved", "rejected", "expired", "abandoned", "error")
_STATUS = re.compile(r"^([1-5])(?:xx|XX)$|^([1-5][0-9]{2})$")


class FilterError(ValueError):
    """A filter value that cannot be used; the message names the field."""


@dataclass(frozen=True)
class FlowFilter:
    identity: str = ""
    host: str = ""
    method: str = ""
    path: str = ""  # "path contains"
    status: str = ""  # 404 or 4xx
    decision: str = ""
    rule: str = ""
    since: str = ""  # ISO date/time (UTC), inclusive
    until: str = ""  # ISO date/time (UTC), exclusive
    session: str = ""
    replays: str = ""  # "" all, "only", "none"

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> FlowFilter:
        values = {f.name: (args.get(f.name) or "").strip()[:500] for f in fields(cls)}
        return cls(**values)

    def as_args(self) -> dict[str, str]:
        """The non-empty filters, for building links that keep them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @property
    def active(self) -> bool:
        return bool(self.as_args())

    def where(self) -> tuple[list[str], list[Any]]:
        """SQL conditions (joined with AND by the caller) and their parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("identity", self.identity), ("host", self.host.lower()),
                              ("session_id", self.session)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.method:
            clauses.append("method = ?")
            params.append(self.method.upper())
        if self.path:
            clauses.append("contains(path, ?)")
            params.append(self.path)
        if self.status:
            match = _STATUS.match(self.status)
            if not match:
                raise FilterError(f"status: expected a code like 404 or a class like 4xx, got {self.status!r}")
            if match.group(1):
                clauses.append("status_code BETWEEN ? AND ?")
                params += [int(match.group(1)) * 100, int(match.group(1)) * 100 + 99]
            else:
                clauses.append("status_code = ?")
                params.append(int(match.group(2)))
        if self.decision:
            if self.decision not in DECISIONS:
                raise FilterError(f"decision: expected one of {', '.join(DECISIONS)}, got {self.decision!r}")
            clauses.append("decision = ?")
            params.append(self.decision)
        if self.rule:
            clauses.append("list_contains(rules, ?)")
            params.append(self.rule)
        for name, op in (("since", ">="), ("until", "<")):
            value = getattr(self, name)
            if value:
                clauses.append(f"started_at {op} ?")
                params.append(parse_time(value, name))
        if self.replays == "only":
            clauses.append("replay_of IS NOT NULL")
        elif self.replays == "none":
            clauses.append("replay_of IS NULL")
        elif self.replays:
            raise FilterError(f"replays: expected only or none, got {self.replays!r}")
        return clauses, params


def parse_time(value: str, name: str = "time") -> datetime:
    """An ISO date or date-time (as a datetime-local input sends it), naive UTC."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{name}: expected a date/time like 2026-11-21T09:30, got {value!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def encode_cursor(started_at: datetime | None, flow_id: str) -> str:
    stamp = started_at.isoformat() if started_at else ""
    return base64.urlsafe_b64encode(f"{stamp}|{flow_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, flow_id = raw.partition("|")
        return datetime.fromisoformat(stamp), flow_id
    except (ValueError, UnicodeDecodeError):
        raise FilterError("the page link is damaged (bad cursor); start again from the first page") from None


@dataclass(frozen=True)
class PageQuery:
    sql: str
    params: list[Any]
    backwards: bool  # rows come oldest first and must be reversed for display
    limit: int


def page_query(flt: FlowFilter, after: str = "", before: str = "", limit: int = PAGE_SIZE,
               columns: tuple[str, ...] = LIST_COLUMNS) -> PageQuery:
    """One page of flows, newest first: older than ``after`` or newer than ``before``.

    One row more than the page is fetched, to know whether another page exists.
    """
    limit = max(1, min(limit, PAGE_SIZE_MAX))
    clauses, params = flt.where()
    backwards = bool(before) and not after
    if after or before:
        stamp, flow_id = decode_cursor(after or before)
        op = "<" if not backwards else ">"
        clauses.append(f"(started_at {op} ? OR (started_at = ? AND id {op} ?))")
        params += [stamp, stamp, flow_id]
    clauses.append("started_at IS NOT NULL")
    order = "ASC" if backwards else "DESC"
    sql = (f"SELECT {', '.join(columns)} FROM flows WHERE {' AND '.join(clauses)} "
           f"ORDER BY started_at {order}, id {order} LIMIT {limit + 1}")
    return PageQuery(sql, params, backwards, limit)


@dataclass
class Page:
    rows: list[dict[str, Any]]
    older: str | None  # cursor for the next (older) page
    newer: str | None  # cursor for the previous (newer) page


def make_page(query: PageQuery, rows: list[dict[str, Any]], had_cursor: bool) -> Page:
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    if query.backwards:
        rows.reverse()
    if not rows:
        return Page([], None, None)
    first, last = rows[0], rows[-1]
    older_exists = more if not query.backwards else True
    newer_exists = (more if query.backwards else had_cursor)
    return Page(
        rows,
        encode_cursor(last["started_at"], last["id"]) if older_exists else None,
        encode_cursor(first["started_at"], first["id"]) if newer_exists else None,
    )
