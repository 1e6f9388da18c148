"""Find an injected secret in a response body however the upstream spelled it.

An upstream that echoes a credential rarely echoes its plain UTF-8 bytes: PHP escapes
``/`` as ``\\/``, .NET writes ``+`` as ``\\u002B``, other serialisers use lower-case
hex, any ``\\uXXXX`` for any character, JSON inside JSON doubles the backslashes, a
query string percent-encodes it (``+`` for a space), XML and HTML use character
references, and the body may be UTF-16 or UTF-32. A scrubber that only knows the literal
bytes hands every one of those to the agent in clear.

:class:`EchoForms` compiles, for a set of secrets, one byte-level regex per character
encoding. Each character of a secret may appear in any of its spellings (literal,
``\\uXXXX`` in either case, JSON short escapes, ``%XX``, ``&#NN;``/``&#xHH;``, named
XML entities), mixed freely within one occurrence, and the secret as a whole may also
appear base64-encoded (standard or URL-safe alphabet, at any of the three byte
alignments). The regex is built from characters, then each character is encoded in the
target charset, so the UTF-16LE regex matches UTF-16LE text: no decoding, no
re-encoding, and bytes outside a match are left exactly as they were.

Charsets scanned: UTF-8 (which covers every ASCII-compatible charset for ASCII secrets)
always; UTF-16 in both byte orders when the body holds a NUL byte (the UTF-16 form of
any ASCII character does), UTF-32 when it holds three in a row; the declared charset when it is another stateless one. A
stateful charset (UTF-7, ...) or an unknown one cannot be scrubbed byte-wise: the body
is decoded and, if a secret shows there, :class:`Unscrubbable` is raised so the caller
refuses the response instead of passing it.
"""

from __future__ import annotations

import base64
import codecs
import re
from functools import lru_cache
from typing import Any

try:  # linear time, and a DFA scan instead of trying every alternative at every byte
    import re2
except ImportError:  # pragma: no cover - google-re2 is a runtime dependency
    re2 = None

#: What a secret is replaced with wherever it would appear: echoes to the agent, the
#: recording, logs, the review UI (safe inside JSON strings and headers). The only marker.
REDACTED = "[redacted]"
#: One-character tokens of a form: (characters any of which may appear, min, max).
Token = tuple[str, int, int]
#: JSON in JSON in JSON...: up to seven backslashes before an escape.
MAX_BACKSLASHES = 7
WIDE = ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
_JSON_SHORT = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
_NAMED = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos"}
#: Secrets shorter than this are not searched in base64 (the stable core would be short).
MIN_BASE64 = 9


class Unscrubbable(Exception):
    """A body a secret may hide in that cannot be scrubbed without changing its meaning."""


def _hex(value: int, width: int = 0) -> list[Token]:
    return [(d + d.upper() if d.isalpha() else d, 1, 1) for d in f"{value:0{width}x}"]


def _literal(text: str) -> list[Token]:
    return [(c, 1, 1) for c in text]


def char_forms(ch: str) -> list[list[Token]]:
    """Every spelling of one character of a secret."""
    cp = ord(ch)
    slash: Token = ("\\", 1, MAX_BACKSLASHES)
    forms = [_literal(ch)]
    if cp > 0xFFFF:
        high, low = 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)
        forms.append([slash, ("u", 1, 1), *_hex(high, 4), slash, ("u", 1, 1), *_hex(low, 4)])
    else:
        forms.append([slash, ("u", 1, 1), *_hex(cp, 4)])
    if ch in _JSON_SHORT:
        forms.append([slash, (_JSON_SHORT[ch], 1, 1)])
    forms.append([tok for byte in ch.encode("utf-8") for tok in [("%", 1, 1), *_hex(byte, 2)]])
    if ch == " ":
        forms.append(_literal("+"))
    forms.append([*_literal("&#"), ("0", 0, 4), *_literal(str(cp)), (";", 1, 1)])
    forms.append([*_literal("&#"), ("xX", 1, 1), ("0", 0, 4), *_hex(cp), (";", 1, 1)])
    if ch in _NAMED:
        forms.append(_literal(f"&{_NAMED[ch]};"))
    return forms


def base64_cores(secret: str) -> set[str]:
    """The base64 characters that depend only on the secret, at each byte alignment."""
    data = secret.encode("utf-8")
    if len(data) < MIN_BASE64:
        return set()
    cores = set()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + data).decode("ascii")
        core = encoded[-(-8 * pad // 6):(8 * (pad + len(data))) // 6]
        cores.update({core, core.replace("+", "-").replace("/", "_")})
    return cores


def _encode_token(token: Token, charset: str) -> str | None:
    chars, low, high = token
    encoded = []
    for c in chars:
        try:
            encoded.append(c.encode(charset))
        except UnicodeEncodeError:
            continue
    if not encoded:
        return None
    alternatives = [re.escape(e).decode("latin-1") for e in encoded]
    if len(encoded) == 1 and len(encoded[0]) == 1:
        atom = alternatives[0]
    else:  # a group, so that a quantifier applies to the whole character
        atom = "(?:" + "|".join(alternatives) + ")"
    if (low, high) == (1, 1):
        return atom
    return f"{atom}{{{low},{high}}}"


def _encode_form(form: list[Token], charset: str) -> str | None:
    parts = [_encode_token(token, charset) for token in form]
    return None if any(p is None for p in parts) else "".join(parts)  # type: ignore[arg-type]


def _secret_pattern(secret: str, charset: str) -> str:
    chars = []
    for ch in secret:
        spelled = [p for p in (_encode_form(f, charset) for f in char_forms(ch)) if p is not None]
        chars.append("(?:" + "|".join(spelled) + ")")
    whole = ["".join(chars)]
    whole += [re.escape(core.encode(charset)).decode("latin-1") for core in sorted(base64_cores(secret))]
    return "|".join(whole)


class EchoForms:
    """The compiled spellings of a set of secrets, per charset (built on first use)."""

    def __init__(self, secrets: frozenset[str]) -> None:
        # Longest first: a secret that contains another is replaced whole.
        self.secrets = sorted((s for s in secrets if s), key=len, reverse=True)
        self._compiled: dict[str, Any] = {}
        self._text = re.compile("|".join(_text_pattern(s) for s in self.secrets)) if self.secrets else None

    def pattern(self, charset: str) -> Any:
        """The byte regex for ``charset`` (RE2 in Latin-1 mode: one byte, one character)."""
        if charset not in self._compiled:
            parts = [_secret_pattern(s, charset) for s in self.secrets]
            self._compiled[charset] = _compile_bytes("|".join(parts).encode("latin-1")) if parts else None
        return self._compiled[charset]

    def longest(self, charsets: tuple[str, ...] = ("utf-8", *WIDE)) -> int:
        """An upper bound of the byte length of one match (for streaming hold-back)."""
        most = 0
        for s in self.secrets:
            per_char = sum(max(_form_length(f) for f in char_forms(ch)) for ch in s)
            most = max(most, per_char)
        return most * 4 if any(c.startswith("utf-32") for c in charsets) else most * 2

    def scrub(self, data: bytes, charset: str = "utf-8") -> tuple[bytes, int]:
        """Replace every spelling of the secrets in ``data`` read as ``charset``."""
        pattern = self.pattern(charset)
        if pattern is None:
            return data, 0
        if pattern.search(data) is None:  # the usual case: one scan, no copy
            return data, 0
        return pattern.subn(REDACTED.encode(charset).replace(b"\\", b"\\\\"), data)

    def scrub_body(self, data: bytes, declared: str | None) -> tuple[bytes, int]:
        """Scrub a body in every charset a client might read it in. Raises
        :class:`Unscrubbable` if the declared charset cannot be scrubbed byte-wise and a
        secret shows in it, or is unknown."""
        total = 0
        for charset in charsets_for(data, declared):
            data, count = self.scrub(data, charset)
            total += count
        if declared and not _byte_scannable(declared):
            try:
                text = data.decode(declared, "replace")
            except LookupError:
                raise Unscrubbable(f"the body declares an unknown charset {declared!r}") from None
            if self.found_in_text(text):
                raise Unscrubbable(f"a secret is echoed in {declared!r} text, which cannot be scrubbed in place")
        return data, total

    def found_in_text(self, text: str) -> bool:
        """Whether any spelling of a secret occurs in decoded text."""
        return bool(self._text and self._text.search(text))


def _compile_bytes(pattern: bytes) -> Any:
    if re2 is None:
        return re.compile(pattern)
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.log_errors = False
    options.max_mem = 64 << 20  # a few long secrets in UTF-32 need more than the 8 MiB default
    return re2.compile(pattern, options)


def _form_length(form: list[Token]) -> int:
    return sum(high for _, _, high in form)


def _text_pattern(secret: str) -> str:
    chars = []
    for ch in secret:
        chars.append("(?:" + "|".join(_encode_form_text(f) for f in char_forms(ch)) + ")")
    return "|".join(["".join(chars), *(re.escape(c) for c in sorted(base64_cores(secret)))])


def _encode_form_text(form: list[Token]) -> str:
    out = []
    for chars, low, high in form:
        atom = re.escape(chars) if len(chars) == 1 else "[" + "".join(re.escape(c) for c in chars) + "]"
        out.append(atom if (low, high) == (1, 1) else f"{atom}{{{low},{high}}}")
    return "".join(out)


@lru_cache(maxsize=64)
def _byte_scannable(charset: str) -> bool:
    """Stateless charsets in which each character has one byte sequence of its own."""
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return False
    if name in ("utf-8", "utf-16", "utf-32", *WIDE):
        return True
    if name in ("utf-7",) or name.startswith(("iso2022", "hz", "utf-8-sig")):
        return name == "utf-8-sig"
    try:
        return "".join(map(chr, range(32, 127))).encode(name) == bytes(range(32, 127))
    except (UnicodeError, LookupError):
        return False


def charsets_for(data: bytes, declared: str | None) -> list[str]:
    """The charsets to scrub ``data`` in: UTF-8, the wide ones if there are NULs, and
    the declared one if it is another byte-scannable charset."""
    charsets = ["utf-8"]
    if b"\0" in data:  # the UTF-16 form of any ASCII character has a NUL byte...
        charsets += WIDE[:2]
        if b"\0\0\0" in data:  # ...and its UTF-32 form three in a row
            charsets += WIDE[2:]
    if declared and _byte_scannable(declared):
        name = codecs.lookup(declared).name
        if name not in ("utf-8", "utf-8-sig", "utf-16", "utf-32", *WIDE):
            charsets.append(name)
    return charsets


@lru_cache(maxsize=256)
def forms_for(secrets: frozenset[str]) -> EchoForms:
    """Most flows share the same few secrets: compile each set once."""
    return EchoForms(secrets)


# --- secrets in query strings (issue 16) ------------------------------------------------

#: Query parameter names that carry credentials (compared lower-case, "-" as "_").
SECRET_PARAM_NAMES = frozenset({
    "api_key", "apikey", "key", "access_key", "access_token", "token", "auth", "auth_token",
    "id_token", "refresh_token", "secret", "client_secret", "password", "passwd", "pwd",
    "signature", "sig", "x_amz_signature", "x_amz_credential", "x_amz_security_token",
    "session", "session_token", "private_token", "bearer", "jwt",
})
#: Parameter names that contain one of these are secret too (``stripe_api_key``, ``authToken``).
SECRET_PARAM_PARTS = ("secret", "token", "password", "passwd", "api_key", "apikey", "signature", "credential")
#: Values that look like credentials whatever the parameter is called.
_SECRET_VALUE = re.compile(
    r"^(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}$|^gh[pousr]_[A-Za-z0-9]{20,}$|^xox[abposr]-[A-Za-z0-9-]{10,}$"
    r"|^AKIA[0-9A-Z]{16}$|^eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*$|^glpat-[A-Za-z0-9_-]{16,}$")
#: Shorter values are not treated as secrets (redacting "1" everywhere would blank the recording).
MIN_QUERY_SECRET = 4


def is_secret_param(name: str, value: str = "") -> bool:
    """Whether a query parameter looks like it carries a credential, by name or by value."""
    key = name.strip().lower().replace("-", "_")
    if key in SECRET_PARAM_NAMES or any(part in key.replace("_", "") or part in key for part in SECRET_PARAM_PARTS):
        return True
    return bool(_SECRET_VALUE.match(value.strip()))


def query_secrets(query: str) -> set[str]:
    """The values of the secret-looking parameters of ``query`` (the part after ``?``),
    decoded, for a redactor to scrub wherever they appear (as headers' values are)."""
    from urllib.parse import parse_qsl

    found = set()
    for name, value in parse_qsl(query, keep_blank_values=True):
        if len(value) >= MIN_QUERY_SECRET and is_secret_param(name, value):
            found.add(value)
    return found


def url_query_secrets(url: Any) -> set[str]:
    """:func:`query_secrets` of a URL (anything not a string has none)."""
    if not isinstance(url, str) or "?" not in url:
        return set()
    return query_secrets(url.partition("?")[2].partition("#")[0])


def detail_query_secrets(detail: Any) -> set[str]:
    """Query secrets in an event's details: any top-level text that is a URL, a request
    target or a query string (``url``, ``target``, ``query``, ...)."""
    found: set[str] = set()
    if isinstance(detail, dict):
        for value in detail.values():
            if isinstance(value, str) and "=" in value:
                found |= url_query_secrets(value) if "?" in value else query_secrets(value)
    return found


def redact_url(url: str) -> str:
    """``url`` with the values of its secret-looking query parameters replaced by
    ``[redacted]``, everything else byte for byte (for events, notifications, the UI)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_sep, fragment = query.partition("#")
    from urllib.parse import parse_qsl

    out = []
    for piece in query.split("&"):
        name, eq, value = piece.partition("=")
        decoded = parse_qsl(piece, keep_blank_values=True)
        plain_name, plain_value = decoded[0] if decoded else (name, value)
        if eq and value and is_secret_param(plain_name, plain_value):
            piece = f"{name}={REDACTED}"
        out.append(piece)
    return base + sep + "&".join(out) + hash_sep + fragment
