"""A hold rule's one-line ``summary``: what the held request would do, in the reviewer's words.

    - name: refunds
      action: hold
      summary: "{$.amount} {$.currency} refund for {$.customer}"

Placeholders are JSON paths into the request body: ``$.field``, ``$.a.b``, ``$.items[0].sku``,
``$['odd key']``. A missing field reads ``?``; objects and lists are not spelled out
(``{…}``, ``[3 items]``). The line is rendered once, when the hold opens, from the body
as the reviewer is shown it (secrets already redacted), and appears in the queue, on the
review page, in notifications and in the recording's ``held`` event. Without a
``summary`` the review UI shows a short automatic summary of the body instead.

Plain text in and out (no rules engine here: the hold book renders the line); the rule
field is declared in addons.holds.spec.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Longest rendered line (the rest is cut with "…").
SUMMARY_MAX = 200
TEMPLATE_MAX = 500
_PLACEHOLDER = re.compile(r"\{(\$[^{}]*)\}")
_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\s*'((?:[^'\\]|\\.)*)'\s*\]|\[\s*\"((?:[^\"\\]|\\.)*)\"\s*\]")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def parse_path(path: str) -> list[str | int]:
    """``$.items[0].sku`` -> ``["items", 0, "sku"]``; raises ValueError."""
    if not path.startswith("$"):
        raise ValueError(f"a placeholder must be a JSON path starting with $, got {path!r}")
    steps: list[str | int] = []
    at = 1
    while at < len(path):
        match = _STEP.match(path, at)
        if not match:
            raise ValueError(f"cannot read the JSON path {path!r} at {path[at:]!r} (use $.a.b, $.a[0], $['a b'])")
        name, index, single, double = match.groups()
        steps.append(int(index) if index is not None else name if name is not None else single or double or "")
        at = match.end()
    return steps


def compile_template(value: Any) -> str:
    """The template, checked: text with at least one ``{$...}`` placeholder, each readable."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError('summary must be text like "{$.amount} {$.currency} refund for {$.customer}"')
    if len(value) > TEMPLATE_MAX:
        raise ValueError(f"summary must be at most {TEMPLATE_MAX} characters")
    placeholders = _PLACEHOLDER.findall(value)
    if not placeholders:
        raise ValueError("summary needs at least one {$.field} placeholder over the request body")
    for path in placeholders:
        parse_path(path)
    return value


def _lookup(document: Any, steps: list[str | int]) -> Any:
    for step in steps:
        found = (isinstance(step, int) and isinstance(document, list) and step < len(document)) or \
            (isinstance(step, str) and isinstance(document, dict) and step in document)
        if not found:
            return None
        document = document[step]
    return document


def _text(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{…}"
    if isinstance(value, list):
        return f"[{len(value)} items]"
    return str(value)


def render(template: str, body: str | None) -> str:
    """The template filled from the JSON ``body`` (``?`` where a field is missing)."""
    try:
        document = json.loads(body) if body else None
    except (ValueError, RecursionError):
        document = None
    line = _PLACEHOLDER.sub(lambda m: _text(_lookup(document, parse_path(m.group(1)))), template)
    line = _UNSAFE.sub(" ", line).strip()
    return line if len(line) <= SUMMARY_MAX else line[:SUMMARY_MAX - 1] + "…"
