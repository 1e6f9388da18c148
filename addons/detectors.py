"""Detectors for personal data and secrets inside free text.

A detector finds ``(start, end)`` spans in a string. Each is a regular expression for
candidates plus a validator that rejects look-alikes (Luhn for cards, mod-97 for IBANs,
issued ranges for SSNs), because a mask that redacts every long number is as useless
to an agent as one that misses real card numbers.

The registry is open: ``register(Detector("employee_id", re.compile(r"EMP-\\d{6}")))``
from any module imported before the rules load makes ``detect: [employee_id]`` valid.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Span = tuple[int, int, str]  # start, end, detector name


@dataclass(frozen=True)
class Detector:
    """Candidates by ``pattern``; a candidate counts only if ``validate(text)`` is true.

    ``group`` selects the part of the match to redact (e.g. the token after "Bearer").
    ``hint`` is a cheap necessary condition (e.g. "contains @"): most strings in an API
    response contain nothing sensitive, and skipping the regex for them is most of the
    speed of ``detect`` over a whole body. The hints of a rule's detectors are combined
    into one pattern, so a clean string costs one scan however many detectors apply.
    """

    name: str
    pattern: re.Pattern[str]
    validate: Callable[[str], bool] | None = None
    group: int = 0
    hint: re.Pattern[str] | None = None

    def find(self, text: str) -> Iterator[tuple[int, int]]:
        for match in self.pattern.finditer(text):
            value = match.group(self.group)
            if self.validate is None or self.validate(value):
                yield match.start(self.group), match.end(self.group)


DETECTORS: dict[str, Detector] = {}


def register(detector: Detector) -> Detector:
    """Add (or replace) a detector; rules refer to it by ``detector.name``."""
    DETECTORS[detector.name] = detector
    _prefilter.cache_clear()
    return detector


@functools.lru_cache(maxsize=256)
def _prefilter(names: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern that any text one of these detectors can match must contain."""
    hints = [DETECTORS[name].hint for name in names]
    if any(hint is None for hint in hints):
        return None
    return re.compile("|".join(f"(?:{hint.pattern})" for hint in hints if hint is not None))


def find_all(text: str, names: tuple[str, ...]) -> list[Span]:
    """Non-overlapping spans of the named detectors, in text order.

    Where spans overlap, the earlier one wins, and of two starting together the longer
    one (a card number is not also three phone numbers).
    """
    prefilter = _prefilter(names)
    if prefilter is not None and prefilter.search(text) is None:
        return []
    spans = []
    for name in names:
        detector = DETECTORS[name]
        if detector.hint is None or detector.hint.search(text):
            spans.extend((s, e, name) for s, e in detector.find(text))
    if len(spans) < 2:
        return spans
    spans.sort(key=lambda span: (span[0], span[0] - span[1]))
    kept: list[Span] = []
    for span in spans:
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


def contains_any(*needles: str) -> re.Pattern[str]:
    """A hint: the text contains one of these substrings."""
    return re.compile("|".join(re.escape(n) for n in needles))


_DIGIT_RUN = re.compile(r"\d\d")


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


# --- email ---------------------------------------------------------------------------

register(Detector("email", re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
), hint=contains_any("@")))

# --- phone numbers ---------------------------------------------------------------------
# E.164 with optional separators ("+1 415-555-2671", "+44 (0)20 7946 0958"), North
# American national forms ("(415) 555-2671", "415.555.2671") and trunk-prefixed European
# national forms ("020 7946 0958", "030 1234567"). Bare digit runs are not phones: they
# are far more often ids, amounts and timestamps.

_PHONE = re.compile(
    r"(?<![\w+.\-/])(?<!\d[ .\-])(?:"
    r"\+[1-9]\d{0,2}" + r"(?:[ .\-]?(?:\(0\)|\(\d{1,4}\)|\d{1,5})){2,6}"
    r"|\(\d{3}\)[ ]?\d{3}[ .\-]\d{4}"
    r"|\d{3}[.\-]\d{3}[.\-]\d{4}"
    r"|\d{3} \d{3} \d{4}"
    r"|0\d{2,4}[ \-]\d{3,4}(?:[ \-]?\d{3,4})?"
    r")(?![\w\-]|[.:/ ]\d)"  # not part of a longer run of digit groups
)


def _valid_phone(text: str) -> bool:
    digits = _digits(text.replace("(0)", ""))
    if text.startswith("+"):
        return 8 <= len(digits) <= 15
    if text.startswith("0"):
        return 9 <= len(digits) <= 12
    # North American Numbering Plan: area code and exchange start with 2-9.
    return len(digits) == 10 and digits[0] in "23456789" and digits[3] in "23456789"


register(Detector("phone", _PHONE, _valid_phone, hint=_DIGIT_RUN))

# --- payment cards -----------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _valid_card(text: str) -> bool:
    digits = _digits(text)
    # Issuer numbers start with 2-6 (Mastercard 2-series, Amex/Diners/JCB 3, Visa 4,
    # Mastercard/Maestro 5, Discover/UnionPay 6); 1... is a millisecond timestamp.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and luhn_ok(digits)


register(Detector("card", re.compile(r"(?<![\w\-.])\d(?:[ \-]?\d){12,18}(?![\w]|[\-.]\d)"), _valid_card, hint=_DIGIT_RUN))

# --- US social security numbers --------------------------------------------------------


def _valid_ssn(text: str) -> bool:
    digits = _digits(text)
    area, group, serial = int(digits[:3]), int(digits[3:5]), int(digits[5:])
    if area == 0 or area == 666 or area >= 900 or group == 0 or serial == 0:
        return False
    return digits not in ("078051120", "219099999")  # numbers printed in advertisements


register(Detector("ssn", re.compile(r"(?<![\w\-.])\d{3}([\- ])\d{2}\1\d{4}(?![\w]|[\-.]\d)"), _valid_ssn, hint=_DIGIT_RUN))

# --- IBAN ----------------------------------------------------------------------------------

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


def iban_ok(compact: str) -> bool:
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None or len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


class _IbanDetector(Detector):
    """IBANs in compact or 4-grouped form. The country fixes the length, so the span
    ends exactly there even if more capital letters or digits follow."""

    def find(self, text: str) -> Iterator[tuple[int, int]]:
        for match in self.pattern.finditer(text):
            start = match.start()
            length = IBAN_LENGTHS.get(text[start:start + 2])
            if length is None:
                continue
            compact, end = [], start
            for end, char in enumerate(text[start:match.end()], start + 1):  # noqa: B007
                if char != " ":
                    compact.append(char)
                if len(compact) == length:
                    break
            follows = text[end:end + 1]
            if len(compact) == length and not follows.isalnum() and iban_ok("".join(compact)):
                yield start, end


register(_IbanDetector("iban", re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}"), hint=_DIGIT_RUN))

# --- secrets --------------------------------------------------------------------------------


def _valid_jwt(text: str) -> bool:
    header = text.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded)


_SECRET_SHAPES = [
    r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}",                       # AWS access key id
    r"gh[pousr]_[A-Za-z0-9]{36,251}",                             # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,255}",                           # GitHub fine-grained PAT
    r"glpat-[A-Za-z0-9_\-]{20,}",                                 # GitLab personal token
    r"xox[abeoprs]-[A-Za-z0-9\-]{10,}",                           # Slack tokens
    r"https://hooks\.slack\.com/services/[A-Za-z0-9/_]{20,}",     # Slack webhook URL
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",                  # Stripe secret/restricted
    r"whsec_[A-Za-z0-9]{24,}",                                    # Stripe webhook secret
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{32,}",                     # OpenAI / Anthropic keys
    r"AIza[0-9A-Za-z_\-]{35}",                                    # Google API key
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]{16,}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
]
register(Detector("secret", re.compile(
    r"(?<![A-Za-z0-9_\-])(?:" + "|".join(_SECRET_SHAPES) + r")(?![A-Za-z0-9_\-])"
), hint=contains_any("AKIA", "ASIA", "ABIA", "ACCA", "gh", "github_pat_", "glpat-", "xox", "hooks.slack.com", "_live_",
                     "_test_", "whsec_", "sk-", "AIza", "PRIVATE KEY")))
# JWTs and bearer tokens are separate detectors that `secret` also runs (see SECRET_FAMILY),
# because they need their own validation or redact only part of the match.
register(Detector(
    "jwt",
    re.compile(r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{8,}(?![A-Za-z0-9_\-])"),
    _valid_jwt,
    hint=contains_any("eyJ"),
))
register(Detector(
    "bearer", re.compile(r"\b[Bb]earer[ ]+([A-Za-z0-9._~+/\-]{16,}=*)(?![A-Za-z0-9._~+/=\-])"), group=1,
    hint=contains_any("earer"),
))

#: Detector names that stand for a family of detectors in rules.
FAMILIES: dict[str, tuple[str, ...]] = {"secret": ("secret", "jwt", "bearer")}


def expand(names: tuple[str, ...]) -> tuple[str, ...]:
    """Rule-level names -> registered detector names (``secret`` includes jwt and bearer)."""
    out: list[str] = []
    for name in names:
        for member in FAMILIES.get(name, (name,)):
            if member not in out:
                out.append(member)
    return tuple(out)
