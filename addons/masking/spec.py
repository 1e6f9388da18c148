"""The ``mask``, ``mask_request`` and ``on_unmaskable`` rule keys: what to hide, and how.

Forms (each item of a ``mask:`` or ``mask_request:`` list)::

    - "$..ssn"                                      # the value becomes "[masked]"
    - {path: "$..card_number", keep_last: 4}        # "************4242"
    - {path: "$..email", with: hash}                # "email_3f9a1c2b04de" (keyed HMAC)
    - {path: "$..dob", with: null}                  # JSON null
    - {path: "$..internal", with: remove}           # delete the key / array element
    - {path: "$..note", with: "<redacted>"}         # any fixed text
    - {path: "$.items[*].notes", detect: [email, phone]}  # PII inside the strings there
    - {detect: [secret]}                            # every string of the body (any text body)
    - {header: "x-internal-token"}                  # a header (response, or request for mask_request)

``on_unmaskable: pass`` lets a response through unmasked when it cannot be masked
(streamed, too large, undecodable); the default ``block`` answers 502.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from addons.core.rulefile import Where
from addons.masking.detectors import DETECTORS, FAMILIES, expand, prepare
from addons.masking.jsonselect import Selector, compile_selector
from addons.policy.engine import LoadContext, rule_field

FIXED, KEEP_LAST, HASH, NULL, REMOVE = "fixed", "keep_last", "hash", "null", "remove"
DEFAULT_TEXT = "[masked]"
MASK_KEYS = ("path", "header", "detect", "with", "keep_last")
UNMASKABLE_ACTIONS = ("block", "pass")


@dataclass(frozen=True)
class Replacement:
    kind: str = FIXED
    #: Fixed text; None means the default: "[masked]", or "[masked:<detector>]" for detect.
    text: str | None = None
    keep: int = 0


@dataclass(frozen=True)
class Mask:
    """One compiled mask. Exactly one target: a body ``path``, a ``header``, or (with
    only ``detect``) every string of the body."""

    replacement: Replacement
    selector: Selector | None = None
    header: str | None = None
    detect: tuple[str, ...] = ()

    @property
    def on_body(self) -> bool:
        return self.header is None

    @property
    def needs_json(self) -> bool:
        return self.selector is not None


@rule_field("mask", type="list of masks (JSONPath, {path, with | keep_last | detect}, {header})",
            example='["$..ssn", {path: "$..card_number", keep_last: 4}]', see="masking.md",
            summary="Mask values in the response before the agent sees it (every matching rule's masks apply).")
def compile_mask(value: Any, where: Where, context: LoadContext) -> tuple[Mask, ...]:
    return compile_masks(value, where)


@rule_field("mask_request", type="list of masks, as for mask", see="masking.md",
            example='[{path: "$.messages[*].content", detect: [email, card]}]',
            summary="Mask values in the request before it is forwarded.")
def compile_mask_request(value: Any, where: Where, context: LoadContext) -> tuple[Mask, ...]:
    return compile_masks(value, where)


@rule_field("on_unmaskable", type="block | pass", example="pass", see="masking.md#when-a-body-cannot-be-masked",
            summary="What happens to a body the masks cannot walk: block (the default, 502) or pass it unmasked.")
def compile_on_unmaskable(value: Any, where: Where, context: LoadContext) -> str:
    if value not in UNMASKABLE_ACTIONS:
        where.fail(f"on_unmaskable must be one of {', '.join(UNMASKABLE_ACTIONS)}, got {value!r}")
    return value


def compile_masks(value: Any, where: Where) -> tuple[Mask, ...]:
    if not isinstance(value, list) or not value:
        where.fail("must be a non-empty list of masks (a JSONPath string or a mapping)")
    return tuple(compile_one(item, where / i) for i, item in enumerate(value))


def compile_one(item: Any, where: Where) -> Mask:
    if isinstance(item, str):
        return Mask(Replacement(), selector=compile_selector(item, where))
    if not isinstance(item, dict):
        where.fail("a mask is a JSONPath string or a mapping with path, header or detect")
    for key in item:
        if key not in MASK_KEYS:
            (where / key).fail(f"unknown mask key {key!r}; expected one of {', '.join(MASK_KEYS)}")
    if "path" in item and "header" in item:
        where.fail("a mask has either path or header, not both")
    if "path" not in item and "header" not in item and "detect" not in item:
        where.fail("a mask needs path, header or detect")
    detect = _detectors(item["detect"], where / "detect") if "detect" in item else ()
    replacement = _replacement(item, where, whole_value=not detect)
    selector = compile_selector(item["path"], where / "path") if "path" in item else None
    header = None
    if "header" in item:
        header = item["header"]
        if not isinstance(header, str) or not header.strip() or any(c in header for c in " :\r\n"):
            (where / "header").fail("header must be a header name such as x-internal-token")
        header = header.strip().lower()
        if replacement.kind == NULL:
            (where / "with").fail("a header cannot be null; use with: remove to drop it")
    return Mask(replacement, selector=selector, header=header, detect=detect)


def _detectors(value: Any, where: Where) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        where.fail("detect must be a detector name or a non-empty list of them")
    known = sorted({*DETECTORS, *FAMILIES})
    for i, name in enumerate(names):
        if name not in known:
            (where / i).fail(f"unknown detector {name!r}; known: {', '.join(known)}")
    expanded = expand(tuple(names))
    prepare(expanded)
    return expanded


def _replacement(item: dict[str, Any], where: Where, whole_value: bool) -> Replacement:
    if "with" in item and "keep_last" in item:
        where.fail("use either with or keep_last, not both")
    if "keep_last" in item:
        keep = item["keep_last"]
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= 64:
            (where / "keep_last").fail("keep_last must be a whole number from 0 to 64")
        return Replacement(KEEP_LAST, keep=keep)
    if "with" not in item:
        return Replacement()
    value = item["with"]
    if value is None or value == NULL:
        kind = NULL
    elif value in (HASH, REMOVE):
        kind = value
    elif isinstance(value, str):
        return Replacement(FIXED, text=value)
    else:
        (where / "with").fail(
            "with must be a replacement text, hash, null or remove "
            f"(got {type(value).__name__}); quote numbers to use them as text"
        )
    if kind in (NULL, REMOVE) and not whole_value:
        (where / "with").fail(f"with: {kind} replaces whole values; it cannot be used with detect")
    return Replacement(kind)


def uses_hash(masks: tuple[Mask, ...]) -> bool:
    return any(m.replacement.kind == HASH for m in masks)
