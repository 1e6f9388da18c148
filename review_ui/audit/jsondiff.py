"""The difference between two JSON documents as a list of added, removed and changed paths.

Used to compare a replay's response with the original's. Objects are compared key by
key, arrays index by index (a replay of the same request usually returns items in the
same order; an inserted item shows as changes from that index on, which is honest about
what a client reading by position would see). Paths are JSONPath-like: ``$.items[0].id``,
with keys that are not plain identifiers quoted: ``$["content-type"]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Keep a diff of two huge documents readable (and the page small).
MAX_CHANGES = 500


@dataclass(frozen=True)
class Change:
    kind: str  # "added" | "removed" | "changed"
    path: str
    old: Any = None
    new: Any = None

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"kind": self.kind, "path": self.path}
        if self.kind != "added":
            result["old"] = self.old
        if self.kind != "removed":
            result["new"] = self.new
        return result


def child_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _IDENTIFIER.match(key):
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


def diff(old: Any, new: Any, limit: int = MAX_CHANGES) -> list[Change]:
    """The changes that turn ``old`` into ``new`` (at most ``limit``), in document order."""
    changes: list[Change] = []
    _walk(old, new, "$", changes, limit)
    return changes


def _same_kind(a: Any, b: Any) -> bool:
    # bool is an int subclass in Python, but true != 1 in JSON.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return type(a) is type(b)


def _walk(old: Any, new: Any, path: str, changes: list[Change], limit: int) -> None:
    if len(changes) >= limit:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                _add(changes, limit, Change("removed", child_path(path, key), old=old[key]))
            else:
                _walk(old[key], new[key], child_path(path, key), changes, limit)
        for key in new:
            if key not in old:
                _add(changes, limit, Change("added", child_path(path, key), new=new[key]))
    elif isinstance(old, list) and isinstance(new, list):
        for index in range(min(len(old), len(new))):
            _walk(old[index], new[index], child_path(path, index), changes, limit)
        for index in range(len(new), len(old)):
            _add(changes, limit, Change("removed", child_path(path, index), old=old[index]))
        for index in range(len(old), len(new)):
            _add(changes, limit, Change("added", child_path(path, index), new=new[index]))
    elif not _same_kind(old, new) or old != new:
        _add(changes, limit, Change("changed", path, old=old, new=new))


def _add(changes: list[Change], limit: int, change: Change) -> None:
    if len(changes) < limit:
        changes.append(change)


_NOT_JSON = object()


def parse_json(text: str | bytes | None) -> Any:
    """The parsed document, or ``_NOT_JSON`` (use :func:`is_json`) when it is not JSON."""
    if text is None or text == "" or text == b"":
        return _NOT_JSON
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return _NOT_JSON


def is_json(value: Any) -> bool:
    return value is not _NOT_JSON


def diff_bodies(old: str | bytes | None, new: str | bytes | None) -> list[Change] | None:
    """The JSON diff of two bodies, or None when either is not JSON (nothing to compare)."""
    a, b = parse_json(old), parse_json(new)
    if not (is_json(a) and is_json(b)):
        return None
    return diff(a, b)
