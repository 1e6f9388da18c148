"""How values read to a human: decoded URLs, redacted query secrets, times, durations, summaries.

Template filters (registered by ``create_app``):

* ``url_shown`` — a URL with its path and query percent-decoded for reading (invalid
  UTF-8 and control characters stay encoded, so nothing is hidden), and the values of
  query parameters that look like credentials replaced with ``[redacted]``;
* ``url_exact`` — the same URL byte for byte as sent, except those secret values;
* ``when`` — a datetime (UTC) or epoch seconds as ``2026-12-02 14:03:22``;
* ``ago`` / ``duration`` — ``3 min 28 s`` instead of ``208738 ms``;
* ``body_summary`` — a one-line summary of a JSON body for the queue.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlsplit

from addons.core.secretforms import REDACTED, is_secret_param, redact_url

SUMMARY_MAX = 120
#: Scalar fields a summary names first (money and who it is for), then the others in order.
SUMMARY_FIRST = ("amount", "total", "value", "currency", "customer", "customer_id", "user", "user_id",
                 "account", "email", "to", "recipient", "id", "name", "action", "type", "reason")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _decode(part: str) -> str:
    """Percent-decoding for reading: kept encoded where decoding would mislead."""
    try:
        text = unquote_to_bytes(part).decode("utf-8")
    except UnicodeDecodeError:
        return part
    # Control and bidi-override characters would reorder or hide text: show them encoded.
    return _UNSAFE.sub(lambda m: quote(m.group(0)), text)


def _decode_pair(piece: str) -> str:
    """One ``name=value`` decoded, with separators that were encoded kept encoded."""
    name, eq, value = piece.replace("+", " ").partition("=")
    name = _decode(name).replace("&", "%26").replace("=", "%3D")
    return name + eq + _decode(value).replace("&", "%26")


def url_exact(url: str) -> str:
    """The URL as sent, secret query values redacted."""
    return redact_url(url)


def url_shown(url: str) -> str:
    """The URL decoded for reading (see the module docstring)."""
    parts = urlsplit(url_exact(url))
    origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme else parts.netloc
    shown = origin + _decode(parts.path)
    if parts.query:
        shown += "?" + "&".join(_decode_pair(p) for p in parts.query.split("&"))
    return shown


def query_params(url: str) -> list[tuple[str, str, bool]]:
    """(name, value, redacted) for each query parameter, decoded, secrets redacted."""
    query = urlsplit(url).query
    rows = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        secret = bool(value) and is_secret_param(name, value)
        rows.append((_decode(name), REDACTED if secret else _decode(value), secret))
    return rows


def when(value: Any) -> str:
    """A timestamp to the second, UTC: datetime (naive means UTC) or epoch seconds."""
    if value in (None, ""):
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def iso(value: Any) -> str:
    """The machine-readable form of :func:`when`, for ``<time datetime>``."""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat(timespec="seconds")
    return ""


def duration(seconds: Any) -> str:
    """``0.8 s``, ``42 s``, ``3 min 28 s``, ``2 h 05 min``, ``3 d 4 h``; '' for None."""
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def duration_ms(ms: Any) -> str:
    return "" if ms is None else duration(float(ms) / 1000)


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value if len(value) <= 40 else value[:39] + "…"
    return None


def body_summary(body: str | None, limit: int = SUMMARY_MAX) -> str:
    """A short automatic summary of a JSON object body: its telling scalar fields.

    ``{"amount": 250, "currency": "EUR", "customer": "cus_8841", ...}`` ->
    ``amount 250 · currency EUR · customer cus_8841 · …``. Not JSON: its first line.
    """
    if not body:
        return ""
    try:
        document = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        first = body.strip().splitlines()[0] if body.strip() else ""
        return first[:limit - 1] + "…" if len(first) > limit else first
    if isinstance(document, list):
        return f"{len(document)} items" + (f": {body_summary(json.dumps(document[0]), limit - 12)}"
                                            if document and isinstance(document[0], dict) else "")
    if not isinstance(document, dict):
        return _scalar(document) or ""
    keys = sorted(document, key=lambda k: (SUMMARY_FIRST.index(k.lower()) if k.lower() in SUMMARY_FIRST
                                            else len(SUMMARY_FIRST)))
    parts = []
    for key in keys:
        shown = _scalar(document[key])
        if shown is not None:
            parts.append(f"{key} {shown}")
    text = " · ".join(parts)
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def register(app: Any) -> None:
    """Install the filters on ``app``'s Jinja environment."""
    filters = app.jinja_env.filters
    filters.update(url_shown=url_shown, url_exact=url_exact, when=when, iso=iso, duration=duration,
                   duration_ms=duration_ms, body_summary=body_summary)
