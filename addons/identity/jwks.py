"""JWT verification settings (``jwt:``) and the issuer's signing keys (JWKS).

::

    jwt:
      issuer: https://idp.example.com/
      audience: portcullis
      jwks: jwks.json            # a file (relative to the rules file) or an https:// URL
      identity_claim: sub        # default sub
      groups_claim: groups       # default groups (a list, or a space-separated string)
      algorithms: [RS256, ES256] # default; asymmetric algorithms only
      leeway: 30                 # seconds of clock skew allowed for exp/nbf
      jwks_refresh_interval: 30  # at most one refetch per this many seconds on an unknown kid
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from addons.core.rulefile import Where
from addons.policy.engine import LoadContext, top_level_field

log = logging.getLogger("portcullis.identity")

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
MAX_JWKS_BYTES = 1024 * 1024

JWT_KEYS = ("issuer", "audience", "jwks", "identity_claim", "groups_claim", "algorithms",
            "leeway", "jwks_refresh_interval")


@dataclass(frozen=True)
class JwtConfig:
    issuer: str
    audience: str
    keys: JwksCache = field(compare=False)
    identity_claim: str = "sub"
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0


@top_level_field("jwt", type="mapping {issuer, audience, jwks, ...}", see="identity.md#jwts-from-an-identity-provider",
                 example="{issuer: https://idp.example.com/, audience: portcullis, jwks: https://idp.example.com/jwks.json}",
                 summary="Accept agents' JWTs signed by an identity provider's keys.")
def compile_jwt(value: Any, where: Where, context: LoadContext) -> JwtConfig:
    if not isinstance(value, dict):
        where.fail("jwt must be a mapping with issuer, audience and jwks")
    for key in value:
        if key not in JWT_KEYS:
            (where / key).fail(f"unknown key {key!r}; expected one of {', '.join(JWT_KEYS)}")
    for key in ("issuer", "audience", "jwks"):
        if not isinstance(value.get(key), str) or not value[key]:
            (where / key).fail(f"jwt.{key} is required (a non-empty string)")
    claims = {}
    for key in ("identity_claim", "groups_claim"):
        if key in value:
            if not isinstance(value[key], str) or not value[key]:
                (where / key).fail("expected a claim name")
            claims[key] = value[key]
    algorithms = value.get("algorithms", ["RS256", "ES256"])
    if not isinstance(algorithms, list) or not algorithms or any(a not in ALGORITHMS for a in algorithms):
        (where / "algorithms").fail(f"algorithms must be a list drawn from {', '.join(ALGORITHMS)}")
    numbers = {}
    for key, default in (("leeway", 30.0), ("jwks_refresh_interval", 30.0)):
        number = value.get(key, default)
        if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
            (where / key).fail("expected a number of seconds >= 0")
        numbers[key] = float(number)
    keys = JwksCache.configure(value["jwks"], where / "jwks", context, tuple(algorithms),
                               numbers["jwks_refresh_interval"])
    return JwtConfig(value["issuer"], value["audience"], keys, algorithms=tuple(algorithms),
                     leeway=numbers["leeway"], **claims)


class JwksUnavailable(Exception):
    """The key set could not be fetched or parsed."""


class JwksCache:
    """Signing keys by ``kid``, from a file or an https URL.

    Keys are reloaded when a token names a ``kid`` we do not know (key rotation), at
    most once per ``min_refresh`` seconds, and otherwise every ``ttl`` seconds so that
    removed keys stop being accepted.
    """

    def __init__(self, location: str, path: Path | None, algorithms: tuple[str, ...],
                 min_refresh: float, ttl: float) -> None:
        self.location = location
        self.path = path
        self.algorithms = algorithms
        self.min_refresh = min_refresh
        self.ttl = ttl
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.loaded_at: float | None = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def configure(cls, location: str, where: Where, context: LoadContext,
                  algorithms: tuple[str, ...], min_refresh: float) -> JwksCache:
        if location.startswith("https://"):
            return cls(location, None, algorithms, min_refresh, ttl=3600)
        if "://" in location:
            where.fail("jwks must be a file path or an https:// URL")
        path = (context.base_dir / Path(location).expanduser()).resolve()
        cache = cls(location, path, algorithms, min_refresh=0, ttl=5)
        try:
            cache.keys = cache.parse(cache.fetch())
        except JwksUnavailable as exc:
            where.fail(str(exc))
        cache.loaded_at = time.monotonic()
        return cache

    def fetch(self) -> bytes:
        """The raw key set (blocking: file read or HTTPS GET)."""
        if self.path is not None:
            try:
                return self.path.read_bytes()[:MAX_JWKS_BYTES + 1]
            except OSError as exc:
                raise JwksUnavailable(f"cannot read JWKS file {self.path}: {exc.strerror}") from None
        # System trust store; SSL_CERT_FILE / SSL_CERT_DIR override it like for other tools.
        context = ssl.create_default_context()
        request = urllib.request.Request(self.location, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310 - https only
                return response.read(MAX_JWKS_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise JwksUnavailable(f"cannot fetch JWKS from {self.location}: {exc}") from None

    def parse(self, raw: bytes) -> dict[str | None, jwt.PyJWK]:
        if len(raw) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"JWKS from {self.location} is larger than {MAX_JWKS_BYTES} bytes")
        try:
            document = json.loads(raw)
        except ValueError:
            raise JwksUnavailable(f"JWKS from {self.location} is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JwksUnavailable(f"JWKS from {self.location} has no 'keys' list")
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # unsupported key types are skipped, like other verifiers do
            # Only asymmetric keys of the allowed algorithms; never an HMAC secret.
            if key.algorithm_name in self.algorithms:
                keys[entry.get("kid")] = key
        if not keys:
            raise JwksUnavailable(
                f"JWKS from {self.location} has no usable key for {', '.join(self.algorithms)}"
            )
        return keys

    async def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = self.loaded_at is None or now - self.loaded_at >= self.ttl
        unknown = self._lookup(kid) is None
        may_refresh = self.loaded_at is None or now - self.loaded_at >= self.min_refresh
        if stale or (unknown and may_refresh):
            await self._refresh()
        return self._lookup(kid)

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(kid) if kid is not None else None

    async def _refresh(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            started = time.monotonic()
            try:
                try:
                    keys = self.parse(await asyncio.to_thread(self.fetch))
                except JwksUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - an unexpected failure is an unavailable key set
                    log.exception("JWKS refresh from %s failed unexpectedly", self.location)
                    raise JwksUnavailable(f"cannot load JWKS from {self.location}: {exc!r}") from None
            except JwksUnavailable:
                if not self.keys:
                    raise
                # Keep serving the keys we have; an IdP hiccup must not lock agents out.
                log.warning("JWKS refresh from %s failed; keeping %d cached keys", self.location, len(self.keys))
                self.loaded_at = started
                return
            self.keys = keys
            self.loaded_at = started
