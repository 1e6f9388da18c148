"""Apply compiled masks to a JSON document, to free text and to headers.

Each application adds to a :class:`Tally` (how many values, at which paths) so the
audit trail can say what was masked where without ever holding the original values.
Paths are reported with array indices folded (``$.items[*].email``) to keep events
small for large arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from addons.masking.bodies import ExactFloat
from addons.masking.detectors import find_all
from addons.masking.jsonselect import Link, Location, render
from addons.masking.pseudonyms import Pseudonyms
from addons.masking.spec import (
    DEFAULT_TEXT,
    FIXED,
    HASH,
    KEEP_LAST,
    NULL,
    REMOVE,
    Mask,
    Replacement,
)

#: Integers this long are also scanned by detectors (a card number sent as a number).
SCAN_INT_DIGITS = 12
_INT_SCAN = 10 ** (SCAN_INT_DIGITS - 1)


@dataclass
class Tally:
    count: int = 0
    #: Where values were masked: rendered lazily, since thousands of array elements
    #: usually fold into a handful of paths.
    folded: set[tuple[str | int, ...] | str] = field(default_factory=set)

    def add(self, path: str, n: int = 1) -> None:
        self.count += n
        self.folded.add(path)

    def add_at(self, link: Link, n: int = 1) -> None:
        keys: list[str | int] = []
        while link is not None:
            link, key = link
            keys.append(0 if isinstance(key, int) else key)
        self.count += n
        self.folded.add(tuple(keys))

    @property
    def paths(self) -> set[str]:
        return {p if isinstance(p, str) else render(p[::-1]) for p in self.folded}


class _Removed:
    """Marks a value to be deleted once all locations of a mask have been handled."""


REMOVED: Any = _Removed()


class Redactor:
    def __init__(self, pseudonyms: Pseudonyms) -> None:
        self.pseudonyms = pseudonyms

    # --- JSON documents -----------------------------------------------------------------

    def document(self, document: Any, masks: Iterable[Mask], tally: Tally) -> Any:
        """Apply body masks in order; returns the (possibly new) document root."""
        for mask in masks:
            if not mask.on_body:
                continue
            if mask.selector is None:  # detect everywhere
                document = self._scrub(document, None, mask, tally)
                continue
            document = self._at_paths(document, mask, tally)
        return document

    def _at_paths(self, document: Any, mask: Mask, tally: Tally) -> Any:
        assert mask.selector is not None
        seen: set[tuple[int, Any]] = set()
        removals: list[Location] = []
        for loc in mask.selector.locate(document):
            ident = (id(loc.parent), loc.key)
            if ident in seen:
                continue
            seen.add(ident)
            if mask.detect:
                new = self._scrub(loc.value, loc.link, mask, tally)
            else:
                new = self.whole(loc.value, loc, mask.replacement)
                tally.add_at(loc.link)
            if loc.parent is None:
                document = None if new is REMOVED else new
            elif new is REMOVED:
                removals.append(loc)
            elif new is not loc.value:
                loc.parent[loc.key] = new
        # Delete list elements from the back so earlier indices stay valid.
        for loc in sorted(removals, key=lambda r: r.key if isinstance(r.key, int) else 0, reverse=True):
            del loc.parent[loc.key]
        return document

    def whole(self, value: Any, where: Location | str, replacement: Replacement) -> Any:
        """The replacement for an entire selected value (at a location or in a header)."""
        kind = replacement.kind
        if kind == FIXED:
            return DEFAULT_TEXT if replacement.text is None else replacement.text
        if kind == NULL:
            return None
        if kind == REMOVE:
            return REMOVED
        if kind == HASH:
            return self.pseudonyms.token(value, where if isinstance(where, str) else _field_name(where.link))
        text = _scalar_text(value)
        return DEFAULT_TEXT if text is None else keep_last(text, replacement.keep)

    def _scrub(self, value: Any, link: Link, mask: Mask, tally: Tally) -> Any:
        """Run the mask's detectors over every string (and long integer) in ``value``."""
        stack: list[tuple[Any, Any, Any, Link]] = [(None, None, value, link)]
        push, pop = stack.append, stack.pop
        root = value
        while stack:
            parent, key, item, here = pop()
            kind = type(item)
            if kind is dict or kind is list:
                # Only what a detector could match is visited: strings, long integers.
                for k, v in (item.items() if kind is dict else enumerate(item)):
                    t = type(v)
                    if t is str or t is dict or t is list or t is int and not -_INT_SCAN < v < _INT_SCAN:
                        push((item, k, v, (here, k)))
                continue
            new = self._detect_in(item, mask, tally, here)
            if new is item:
                continue
            if parent is None:
                root = new
            else:
                parent[key] = new
        return root

    def _detect_in(self, item: Any, mask: Mask, tally: Tally, link: Link) -> Any:
        if isinstance(item, str):
            new, n = self.detect_text(item, mask)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= _INT_SCAN:
            text = str(item)
            spans = find_all(text, mask.detect)
            if not (len(spans) == 1 and spans[0][:2] == (0, len(text))):
                return item
            new, n = self.detect_text(text, mask)
        else:
            return item
        if n:
            tally.add_at(link, n)
            return new
        return item

    # --- text --------------------------------------------------------------------------------

    def detect_text(self, text: str, mask: Mask) -> tuple[str, int]:
        spans = find_all(text, mask.detect)
        if not spans:
            return text, 0
        out, last = [], 0
        for start, end, name in spans:
            out.append(text[last:start])
            out.append(self._replace_span(text[start:end], name, mask.replacement))
            last = end
        out.append(text[last:])
        return "".join(out), len(spans)

    def _replace_span(self, found: str, detector: str, replacement: Replacement) -> str:
        if replacement.kind == HASH:
            return self.pseudonyms.token(found, detector)
        if replacement.kind == KEEP_LAST:
            return keep_last(found, replacement.keep)
        return f"[masked:{detector}]" if replacement.text is None else replacement.text

    def text(self, text: str, masks: Iterable[Mask], tally: Tally) -> str:
        """Free text (not JSON): only masks without a path, i.e. ``{detect: [...]}``."""
        for mask in masks:
            if mask.on_body and mask.selector is None:
                text, n = self.detect_text(text, mask)
                if n:
                    tally.add("body", n)
        return text

    # --- headers -------------------------------------------------------------------------

    def headers(self, headers: http.Headers, masks: Iterable[Mask], tally: Tally) -> None:
        for mask in masks:
            if mask.header is None or mask.header not in headers:
                continue
            values = headers.get_all(mask.header)
            where = f"header:{mask.header}"
            if mask.detect:
                results = [self.detect_text(v, mask) for v in values]
                found = sum(n for _, n in results)
                if found:
                    headers.set_all(mask.header, [v for v, _ in results])
                    tally.add(where, found)
                continue
            new = [self.whole(v, mask.header, mask.replacement) for v in values]
            if mask.replacement.kind == REMOVE:
                del headers[mask.header]
            else:
                headers.set_all(mask.header, new)
            tally.add(where, len(values))


def keep_last(text: str, keep: int) -> str:
    """Stars for all but the last ``keep`` characters; short values are starred whole."""
    if keep == 0 or len(text) <= keep:
        return "*" * len(text)
    return "*" * (len(text) - keep) + text[-keep:]


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value.text if isinstance(value, ExactFloat) else str(value)


def _field_name(link: Link) -> str:
    """The nearest object key above a value: the prefix of its pseudonym."""
    while link is not None:
        link, key = link
        if isinstance(key, str):
            return key
    return "value"
