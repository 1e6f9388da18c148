"""Stable pseudonyms for masked values: ``email_3f9a1c2b04de``.

A pseudonym is a keyed HMAC-SHA256 of the value, so the same e-mail address gets the
same token in every response and across restarts (recordings stay joinable), while
nobody without the key can test guesses against the tokens. The key comes from
``PORTCULLIS_MASK_KEY`` or is generated once into ``<confdir>/portcullis-mask.key``
(mode 0600). Losing or changing the key changes every pseudonym.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

KEY_ENV = "PORTCULLIS_MASK_KEY"
KEY_FILE = "portcullis-mask.key"
#: Hex digits of the HMAC kept in a token: 48 bits, so collisions stay unlikely up to
#: millions of distinct values while tokens stay short enough to read.
TOKEN_HEX = 12


class MaskKeyError(Exception):
    """The pseudonym key cannot be read or created; the message says what to fix."""


def load_key(confdir: str | Path | None) -> bytes:
    """The HMAC key: from the environment, else the confdir key file (created if absent)."""
    from_env = os.environ.get(KEY_ENV)
    if from_env:
        return from_env.encode("utf-8")
    if not confdir:
        raise MaskKeyError(f"no {KEY_ENV} set and no confdir to keep a generated key in")
    path = Path(confdir).expanduser() / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MaskKeyError(f"{path} is readable by other users; run: chmod 600 {path}")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise MaskKeyError(f"cannot read the mask key {path}: {exc}") from None
    if len(key) < 16:
        raise MaskKeyError(f"the mask key in {path} is shorter than 16 bytes")
    return key


def _create_key_file(path: Path) -> None:
    """Write a new key atomically: two gateways starting at once agree on one key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        try:
            os.link(temporary, path)  # fails if another process won the race: keep theirs
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)


def canonical(value: Any) -> bytes:
    """Strings hash as themselves, anything else as compact JSON ("42" and 42 agree)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


_PREFIX_JUNK = re.compile(r"[^a-z0-9_]+")


@functools.lru_cache(maxsize=1024)
def clean_prefix(name: str) -> str:
    """A field or detector name as a token prefix: lower-case letters, digits, '_'."""
    return _PREFIX_JUNK.sub("_", name.lower()).strip("_")[:32] or "value"


class Pseudonyms:
    """Makes tokens; the key is loaded on first use so rules without ``hash`` need none."""

    def __init__(self, confdir: str | Path | None = None, key: bytes | None = None) -> None:
        self.confdir = confdir
        self._key = key

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = load_key(self.confdir)
        return self._key

    def token(self, value: Any, prefix: str) -> str:
        digest = hmac.digest(self.key, canonical(value), hashlib.sha256).hex()
        return f"{clean_prefix(prefix)}_{digest[:TOKEN_HEX]}"
