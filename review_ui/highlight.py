"""Pretty-printed, highlighted JSON as safe HTML, rendered on the server.

The UI's Content-Security-Policy allows no inline script, so highlighting happens here:
every piece of text is HTML-escaped and wrapped in a ``<span class="j-...">`` (the
classes the shared stylesheet colours). Values the gateway replaced, i.e. masked
(``[masked]``, ``[masked:email]``) or redacted secrets (``[redacted]``), get the extra
class ``masked`` and a title, so auditors see what they are not seeing.
"""

from __future__ import annotations

import json
from typing import Any

from markupsafe import Markup, escape

MASK_MARKERS = ("[masked", "[redacted]", "[REDACTED]")
INDENT = "  "
#: Bodies larger than this are shown raw: highlighting megabytes only slows the page.
HIGHLIGHT_MAX = 512 * 1024


def is_masked(value: str) -> bool:
    return any(marker in value for marker in MASK_MARKERS)


def highlight_json(text: str | None) -> Markup | None:
    """The body pretty-printed and highlighted, or None when it is not (small) JSON."""
    if not text or len(text) > HIGHLIGHT_MAX:
        return None
    try:
        document = json.loads(text)
    except (ValueError, TypeError):
        return None
    parts: list[str] = []
    _render(document, 0, parts)
    return Markup("".join(parts))


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        encoded = escape(json.dumps(value, ensure_ascii=False))
        if is_masked(value):
            return f'<span class="j-str masked" title="masked or redacted by the gateway">{encoded}</span>'
        return f'<span class="j-str">{encoded}</span>'
    if isinstance(value, bool) or value is None:
        return f'<span class="j-lit">{json.dumps(value)}</span>'
    return f'<span class="j-num">{escape(json.dumps(value))}</span>'


def _render(value: Any, depth: int, out: list[str]) -> None:
    pad, inner = INDENT * depth, INDENT * (depth + 1)
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{\n")
        for index, (key, item) in enumerate(value.items()):
            out.append(f'{inner}<span class="j-key">{escape(json.dumps(key, ensure_ascii=False))}</span>: ')
            _render(item, depth + 1, out)
            out.append(",\n" if index < len(value) - 1 else "\n")
        out.append(f"{pad}}}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        out.append("[\n")
        for index, item in enumerate(value):
            out.append(inner)
            _render(item, depth + 1, out)
            out.append(",\n" if index < len(value) - 1 else "\n")
        out.append(f"{pad}]")
    else:
        out.append(_scalar(value))
