"""Detectors for personal data and secrets inside free text.

A detector finds ``(start, end)`` spans in a string. Each is a regular expression for
candidates plus a validator that rejects look-alikes (Luhn for cards, mod-97 for IBANs,
issued ranges for SSNs), because a mask that redacts every long number is as useless
to an agent as one that misses real card numbers.

The registry is open: ``register(Detector("employee_id", re.compile(r"EMP-\\d{6}")))``
from any module imported before the rules load makes ``detect: [employee_id]`` valid.

Accuracy is measured, not assumed: tests/detector_corpus/ holds positives and negatives
per kind from other projects' public test data (each group cites its source), and
tests/test_detector_corpus.py holds every kind to recall >= 0.95 and false positives
<= 0.02 on it. Speed per kind is in bench/detectors.py.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import importlib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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
    #: The longest text (in characters) a match can span, or None if unbounded. A stream
    #: masker holds back this many characters of text that arrives in pieces
    #: (addons.masking.streaming), so a value split across events is still seen whole.
    window: int | None = 256
    #: Whether a match may contain whitespace. One that cannot lies within a single run
    #: of non-space characters, so a stream masker needs to hold back only the run the
    #: text ends with (an e-mail address being typed), not the whole window.
    spaces: bool = True

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
# Local parts and domains may be internationalised (RFC 6531: "josé@correo.es"), and
# top-level domains may be IDNs or their punycode ("xn--p1ai"). `\w` is Unicode-aware;
# a top-level domain is letters only, or punycode.

# Python's `\w` leaves out combining marks, which Indic scripts need ("डाटा.भारत").
_MARKS = "\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0900-\u0dff\u0e31-\u0e4e"
_LETTER_OR_DIGIT = f"(?:[^\\W_]|[{_MARKS}])"
_LABEL = f"{_LETTER_OR_DIGIT}(?:(?:{_LETTER_OR_DIGIT}|-){{0,61}}{_LETTER_OR_DIGIT})?"
register(Detector("email", re.compile(
    f"(?<![\\w.%+'{_MARKS}-]){_LETTER_OR_DIGIT}(?:[\\w.%+'{_MARKS}-]{{0,63}}[\\w%+{_MARKS}-])?@"
    f"(?:{_LABEL}\\.)+(?:(?:[^\\W\\d_]|[{_MARKS}]){{2,24}}|xn--[a-z0-9-]{{1,59}})(?![\\w{_MARKS}-])"
), hint=contains_any("@"), window=254, spaces=False))

# --- phone numbers ---------------------------------------------------------------------
# E.164 with optional separators ("+1 415-555-2671", "+44 (0)20 7946 0958"), North
# American national forms ("(415) 555-2671", "415.555.2671") and trunk-prefixed European
# national forms ("020 7946 0958", "030 1234567"). Bare digit runs are far more often
# ids, amounts and timestamps than phones, so one counts only if it is a national mobile
# number of a common country, trunk prefix included ("07400123456", "015123456789"),
# checked against libphonenumber's per-country number plans (the `phonenumbers`
# package) rather than by a wider regex; so are the French-style pairs ("06 12 34 56 78").

_PHONE = re.compile(
    r"(?<![\w+.\-/])(?<!\d[ .\-])(?:"
    r"\+[1-9]\d{0,2}" + r"(?:[ .\-]?(?:\(0\)|\(\d{1,4}\)|\d{1,5})){2,6}"
    r"|\(\d{3}\)[ ]?\d{3}[ .\-]\d{4}"
    r"|\d{3}[.\-]\d{3}[.\-]\d{4}"
    r"|\d{3} \d{3} \d{4}"
    r"|0\d{2,4}[ \-]\d{3,4}(?:[ \-]?\d{3,4})?"
    r"|0\d(?:[ .\-]\d\d){4}"
    r"|0\d{8,11}"
    r")(?![\w\-]|[.:/ ]\d)"  # not part of a longer run of digit groups
)

#: Countries whose national mobile numbers are written with a trunk prefix (mostly 0).
_TRUNK_MOBILE_REGIONS = ("GB", "DE", "FR", "NL", "BE", "AT", "CH", "SE", "IE", "AU", "NZ", "JP", "KR",
                         "IN", "ZA", "NG", "TR", "PH", "ID", "EG")


@functools.cache
def _mobile_plans() -> tuple[tuple[str, frozenset[int], re.Pattern[str], re.Pattern[str]], ...]:
    """(trunk prefix, mobile lengths, mobile pattern, any-number pattern) per region.

    Read from libphonenumber's metadata once and compiled: phonenumbers.parse() costs
    ~100 µs a call, a precompiled fullmatch a microsecond. phonenumbers is imported
    here (30 ms of every start otherwise; prepare() imports it when a rule uses phone)."""
    import phonenumbers

    plans = []
    for region in _TRUNK_MOBILE_REGIONS:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if meta is None or meta.mobile is None or not meta.mobile.national_number_pattern:
            continue
        trunk = meta.national_prefix or ""
        numbers = [d.national_number_pattern for d in (meta.mobile, meta.fixed_line)
                   if d is not None and d.national_number_pattern]
        plans.append((trunk, frozenset(meta.mobile.possible_length),
                      re.compile(meta.mobile.national_number_pattern),
                      re.compile("|".join(f"(?:{n})" for n in numbers))))
    return tuple(plans)


def national_number_ok(digits: str, mobile_only: bool) -> bool:
    """A trunk-prefixed national number ("07400123456") valid in one of the common plans."""
    for trunk, lengths, mobile, anything in _mobile_plans():
        if not trunk or not digits.startswith(trunk):
            continue
        national = digits[len(trunk):]
        if mobile_only:
            if len(national) in lengths and mobile.fullmatch(national):
                return True
        elif anything.fullmatch(national):
            return True
    return False


def _valid_phone(text: str) -> bool:
    digits = _digits(text.replace("(0)", ""))
    if text.startswith("+"):
        return 8 <= len(digits) <= 15
    if len(set(digits)) <= 2:  # 000 0000 0000, 01 01 01 01 01: fillers, not numbers
        return False
    if text.isdigit():  # a bare run: only a national mobile number of a common country
        return national_number_ok(digits, mobile_only=True)
    if text.startswith("0"):
        if len(text) == 14 and text[2] in " .-":  # French-style pairs: 06 12 34 56 78
            return national_number_ok(digits, mobile_only=False)
        return 9 <= len(digits) <= 12
    # North American Numbering Plan: area code and exchange start with 2-9.
    return len(digits) == 10 and digits[0] in "23456789" and digits[3] in "23456789"


register(Detector("phone", _PHONE, _valid_phone, hint=_DIGIT_RUN, window=40))

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
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1 or not luhn_ok(digits):
        return False
    # Issuer numbers start with 2-6 (Mastercard 2-series, Amex/Diners/JCB 3, Visa 4,
    # Mastercard/Maestro 5, Discover/UnionPay 6) or 8 (UnionPay 81); UATP cards are 15
    # digits starting with 1. Other 1... runs are millisecond (13) or microsecond (16)
    # timestamps.
    return digits[0] in "234568" or (digits[0] == "1" and len(digits) == 15)


# Separators may be mixed ("4111 1111-1111 1111", "4111.1111.1111.1111", "4111 - 1111").
register(Detector("card", re.compile(
    r"(?<![\w\-.])\d(?:(?: ?[\-.] ?| {1,2})?\d){12,18}(?![\w]|[\-.]\d)"
), _valid_card, hint=_DIGIT_RUN, window=73))

# --- US social security numbers --------------------------------------------------------


def _valid_ssn(text: str) -> bool:
    digits = _digits(text)
    area, group, serial = int(digits[:3]), int(digits[3:5]), int(digits[5:])
    if area == 0 or area == 666 or area >= 900 or group == 0 or serial == 0:
        return False
    return digits not in ("078051120", "219099999")  # numbers printed in advertisements


# Dashes, spaces, dots ("078.05.1123"), slashes and Unicode dashes, the same one twice.
register(Detector("ssn", re.compile(
    r"(?<![\w\-./])\d{3}([\- ./\u2010-\u2015])\d{2}\1\d{4}(?![\w]|[\-./]\w)"
), _valid_ssn, hint=_DIGIT_RUN, window=11))

# --- IBAN ----------------------------------------------------------------------------------

#: Length per country, from the SWIFT IBAN Registry (release 99, 2025), every country
#: listed there, including the newer members (BI, BY, DJ, FK, HN, IQ, LC, LY, MN, NI, OM,
#: RU, SC, SD, SO, ST, SV, TL, VA, YE).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def iban_ok(compact: str) -> bool:
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None or len(compact) != expected or compact[2:4] in ("00", "01", "99"):
        return False  # ISO 13616 check digits run from 02 to 98
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


class _IbanDetector(Detector):
    """IBANs in compact form or grouped by spaces or dashes. The country fixes the length,
    so the span ends exactly there even if more capital letters or digits follow."""

    def find(self, text: str) -> Iterator[tuple[int, int]]:
        for match in self.pattern.finditer(text):
            start = match.start()
            length = IBAN_LENGTHS.get(text[start:start + 2])
            if length is None:
                continue
            compact, end = [], start
            for end, char in enumerate(text[start:match.end()], start + 1):  # noqa: B007
                if char not in " -":
                    compact.append(char)
                if len(compact) == length:
                    break
            follows = text[end:end + 1]
            if len(compact) == length and not follows.isalnum() and iban_ok("".join(compact)):
                yield start, end


register(_IbanDetector("iban", re.compile(r"(?<![\w\-])[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]){11,30}"), hint=_DIGIT_RUN,
                       window=64))

# --- secrets --------------------------------------------------------------------------------


def _valid_jwt(text: str) -> bool:
    header = text.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded)


#: Keys printed in vendors' documentation: public, so masking them protects nothing and
#: only hides what an agent is reading about.
DOCUMENTED_EXAMPLES = frozenset({
    "AKIAIOSFODNN7EXAMPLE", "AKIAI44QH8DHBEXAMPLE",      # AWS documentation
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",                  # Stripe API reference
    "sk_test_BQokikJOvBiI2HlWgH4olfQ2", "rk_test_4eC39HqLyjWDarjtT1zdp7dc",
})
_PLACEHOLDER_WORDS = re.compile(
    r"(?i)example|xxxx|\*\*\*\*|your[_-]?[a-z_-]{0,20}(?:key|token|secret)|placeholder|redacted|dummy|changeme"
    r"|0000000000|1234567890"
)


def shannon_bits(text: str) -> float:
    """Entropy per character of ``text`` (0 for one repeated character)."""
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in (text.count(c) for c in set(text)))


def real_secret(token: str) -> bool:
    """False for placeholders and documented examples shaped like a key.

    ``ghp_xxxxxxxx…``, ``sk_live_0000…``, ``AKIAIOSFODNN7EXAMPLE``: a real token is random,
    so one with a placeholder word, or with under 3 bits of entropy per character (random
    base62 has ~5.9, hex 4), is a stand-in. Key blocks (PEM, PGP) are checked by shape only.
    """
    if token.startswith("-----"):
        return True
    if token in DOCUMENTED_EXAMPLES or _PLACEHOLDER_WORDS.search(token):
        return False
    return shannon_bits(token) >= 3.0


_KEY_BLOCK_LINE = r"(?:\\n|\s)+(?:[A-Za-z-]+: [^\n\\]*|[A-Za-z0-9+/=]{4,})"
_SECRET_SHAPES = [
    r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}",                       # AWS access key id
    r"gh[pousr]_[A-Za-z0-9]{36,251}",                             # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,255}",                           # GitHub fine-grained PAT
    r"glpat-[A-Za-z0-9_\-]{20,}",                                 # GitLab personal token
    r"xox[abeoprs]-[A-Za-z0-9\-]{10,}",                           # Slack tokens
    # Slack incoming webhooks and workflow triggers, with or without a scheme.
    r"(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_]{20,}",
    r"(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{16,}",             # Stripe secret/restricted
    r"whsec_[A-Za-z0-9]{24,}",                                    # Stripe webhook secret
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{32,}",                     # OpenAI / Anthropic keys
    r"AIza[0-9A-Za-z_\-]{35}",                                    # Google API key
    # PEM private keys and PGP private key blocks; the END line may be cut off (a
    # truncated log line still carries the key), so the block ends where the base64 does.
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:" + _KEY_BLOCK_LINE + r")+"
    r"(?:(?:\\n|\s)*-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?",
]
register(Detector("secret", re.compile(
    r"(?<![A-Za-z0-9_\-])(?:" + "|".join(_SECRET_SHAPES) + r")(?![A-Za-z0-9_\-])"
), real_secret, hint=contains_any("AKIA", "ASIA", "ABIA", "ACCA", "gh", "github_pat_", "glpat-", "xox",
                                   "hooks.slack.com", "_live_", "_test_", "_prod_", "whsec_", "sk-", "AIza",
                                   "PRIVATE KEY"), window=None))
# JWTs and bearer tokens are separate detectors that `secret` also runs (see SECRET_FAMILY),
# because they need their own validation or redact only part of the match. An unsigned
# JWT (`"alg": "none"`) has an empty third part or none at all, and is still a bearer
# credential to any server that accepts it.
register(Detector(
    "jwt",
    re.compile(r"(?<![A-Za-z0-9_\-.])eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}(?:\.[A-Za-z0-9_\-]{8,}|\.)?"
               r"(?![A-Za-z0-9_\-.])"),
    _valid_jwt,
    hint=contains_any("eyJ"),
    window=None,
    spaces=False,
))
register(Detector(
    "bearer", re.compile(r"\b[Bb]earer[ ]+([A-Za-z0-9._~+/\-]{16,}=*)(?![A-Za-z0-9._~+/=\-])"), real_secret,
    group=1, hint=contains_any("earer"), window=None,
))
# A URL with a password in it ("https://deploy:hunter2@git.example.com/"): the user and
# password are replaced, the rest of the URL stays readable.
register(Detector(
    "url_credentials",
    re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]{1,20}://([^\s/?#@:\"'<>]{1,128}:[^\s/?#@\"'<>]{1,256})@"
               r"(?=[A-Za-z0-9\[])"),
    group=1,
    hint=contains_any("://"),
    window=420,
    spaces=False,
))

# --- IP addresses ----------------------------------------------------------------------------
# IPv4 dotted quads (each part 0-255) and IPv6 in any RFC 4291 form, checked by the
# standard library's parser. "version 1.2.3.4" and "v1.2.3.4" are version numbers.

_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|version|release|build|\bver\.?)\s*$")


class _IpDetector(Detector):
    def find(self, text: str) -> Iterator[tuple[int, int]]:
        for match in self.pattern.finditer(text):
            value = match.group()
            if value == "::":  # the unspecified address, but far more often a separator
                continue
            try:
                ipaddress.ip_address(value)
            except ValueError:
                continue
            if "." in value and ":" not in value and _VERSION_BEFORE.search(text[max(0, match.start() - 9):match.start()]):
                continue
            yield match.start(), match.end()


register(_IpDetector("ip", re.compile(
    r"(?<![\w.:])(?:"
    r"(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)"  # a port may follow: 203.0.113.7:443
    r"|(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){1,7}(?::?(?:\d{1,3}\.){3}\d{1,3})?"
    r"(?![\w:]|\.\d))"
), hint=re.compile(r"\d\.\d|[0-9A-Fa-f]?:[0-9A-Fa-f]*:"), window=45,
                     spaces=False))

# --- crypto wallet addresses -----------------------------------------------------------------
# Bitcoin P2PKH/P2SH (base58check: a double-SHA-256 checksum), SegWit/Taproot (bech32 and
# bech32m checksums, BIP-173/BIP-350) and Ethereum addresses (mixed case must carry the
# EIP-55 checksum; all-lower or all-upper hex carries none and is taken as is).

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def base58check_ok(text: str) -> bool:
    number = 0
    for char in text:
        number = number * 58 + _BASE58.index(char)
    pad = len(text) - len(text.lstrip("1"))
    raw = b"\0" * pad + number.to_bytes((number.bit_length() + 7) // 8, "big")
    if len(raw) != 25 or raw[0] not in (0, 5):  # mainnet P2PKH / P2SH
        return False
    return hashlib.sha256(hashlib.sha256(raw[:-4]).digest()).digest()[:4] == raw[-4:]


def bech32_ok(text: str) -> bool:
    if text != text.lower() and text != text.upper():
        return False
    hrp, _, data = text.lower().rpartition("1")
    if hrp != "bc" or len(data) < 7 or any(c not in _BECH32 for c in data):
        return False
    values = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + [_BECH32.index(c) for c in data]
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            if top >> i & 1:
                check ^= gen
    witness_version = _BECH32.index(data[0])
    return check == (1 if witness_version == 0 else 0x2BC830A3)  # bech32 for v0, bech32m after


@functools.cache
def _keccak() -> Any:
    """pycryptodome's Keccak (EIP-55 checksums; hashlib has only SHA3), imported when a rule
    uses the wallet detector (prepare()): it loads cffi, 20 ms and more of every start."""
    from Crypto.Hash import keccak

    return keccak


def keccak256(data: bytes) -> bytes:
    """Keccak-256 as Ethereum uses it (not NIST SHA3-256: the padding differs), which
    hashlib lacks; pycryptodome's C implementation (~7 µs, pure Python was ~300 µs)."""
    return _keccak().new(digest_bits=256, data=data).digest()


def eip55_ok(address: str) -> bool:
    hexdigits = address[2:]
    if hexdigits == hexdigits.lower() or hexdigits == hexdigits.upper():
        return True  # no checksum to check
    digest = keccak256(hexdigits.lower().encode()).hex()
    return all(c.isdigit() or (c.isupper() == (int(h, 16) >= 8)) for c, h in zip(hexdigits, digest[:40], strict=True))


def _valid_wallet(text: str) -> bool:
    if text.startswith(("0x", "0X")):
        return text[1] == "x" and eip55_ok(text)
    if text[:3].lower() == "bc1":
        return bech32_ok(text)
    return base58check_ok(text)


register(Detector("wallet", re.compile(
    r"(?<![\w])(?:0x[0-9a-fA-F]{40}|[13][1-9A-HJ-NP-Za-km-z]{25,34}|(?:bc1|BC1)[02-9ac-hj-np-zAC-HJ-NP-Z]{11,87})(?![\w])"
), _valid_wallet, hint=re.compile(r"0x|[13][1-9A-HJ-NP-Za-km-z]{25}|bc1|BC1"), window=90,
                          spaces=False))

#: Detector names that stand for a family of detectors in rules.
FAMILIES: dict[str, tuple[str, ...]] = {"secret": ("secret", "jwt", "bearer", "url_credentials")}


def prepare(names: tuple[str, ...]) -> None:
    """Import now what the detectors ``names`` (expanded) import at first use, so that the
    first request a rule masks does not pay for it (and an import error shows at load)."""
    if "wallet" in names:
        _keccak()
    if "phone" in names:
        importlib.import_module("phonenumbers")


def expand(names: tuple[str, ...]) -> tuple[str, ...]:
    """Rule-level names -> registered detector names (``secret`` includes jwt, bearer and
    url_credentials)."""
    out: list[str] = []
    for name in names:
        for member in FAMILIES.get(name, (name,)):
            if member not in out:
                out.append(member)
    return tuple(out)
