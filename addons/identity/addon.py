"""Who is calling: proxy credentials (basic tokens or JWTs) turned into an identity.

Rules file (or a separate file given with ``portcullis_identities`` / ``--identities``)::

    identities:
      - name: billing-agent
        groups: [agents, billing]
        token_sha256: "<sha256 hex of the token>"   # portcullis identity add prints the token
    jwt:
      issuer: https://idp.example.com/
      audience: portcullis
      jwks: jwks.json            # a file (relative to this file) or an https:// URL
      identity_claim: sub        # default sub
      groups_claim: groups       # default groups (a list, or a space-separated string)

Agents present ``Proxy-Authorization: Basic base64(name:token)`` or
``Proxy-Authorization: Bearer <jwt>``; clients that can only put credentials in the proxy
URL send a JWT as ``Basic base64(jwt:<jwt>)``. For HTTPS the credentials arrive on the
CONNECT request and the identity is bound to that client connection, as mitmproxy's own
proxyauth addon does. With nothing configured every request is ``anonymous``.

``Proxy-Authorization`` is removed from every request, authenticated or not, so it is
neither forwarded nor recorded. Credentials never appear in log lines or replies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from mitmproxy import connection, ctx, exceptions, http

from addons.core.filewatch import poll_forever
from addons.core.flowstate import FlowState, FlowStates
from addons.core.options import Option, register_options
from addons.core.replies import reply
from addons.core.rulefile import Invalid, Problem, RuleFileError, Where, parse
from addons.identity.jwks import JwksUnavailable, JwtConfig, compile_jwt  # also registers `jwt:`
from addons.policy.addon import _signature
from addons.policy.engine import LoadContext, Policy, top_level_field

log = logging.getLogger("portcullis.identity")

AUTH_HEADER = "Proxy-Authorization"
REALM = "portcullis"
ANONYMOUS = "anonymous"
#: The basic-auth user name that says "the password is a JWT".
JWT_USER = "jwt"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
#: How often the identities file is checked for changes.
RELOAD_INTERVAL_S = 0.5


# --- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    name: str
    groups: frozenset[str]
    token_sha256: str
    source: str = ""


IDENTITY_KEYS = ("name", "groups", "token_sha256")


OPTIONS = (
    Option("portcullis_identities", str | None, None,
           "YAML file of agent identities (identities: / jwt:), in addition to the rules file.",
           flag="--identities", path=True),
)


@top_level_field("identities", type="list of {name, groups, token_sha256}", see="identity.md#proxy-tokens",
                 example="[{name: billing-agent, groups: [billing], token_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"}]",
                 summary="Agents that authenticate with proxy tokens (portcullis identity add writes them).")
def compile_identities(value: Any, where: Where, context: LoadContext) -> tuple[Identity, ...]:
    if not isinstance(value, list):
        where.fail("identities must be a list of {name, groups, token_sha256}")
    result: list[Identity] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        at = where / i
        at.mapping(item, IDENTITY_KEYS, "name, groups and token_sha256")
        name = item.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            (at / "name").fail("name must be 1-64 letters, digits, '.', '_' or '-' (no ':')")
        if name in (ANONYMOUS, JWT_USER):
            (at / "name").fail(f"{name!r} is reserved")
        if name in seen:
            (at / "name").fail(f"duplicate identity {name!r}")
        seen.add(name)
        digest = item.get("token_sha256")
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            (at / "token_sha256").fail("token_sha256 must be 64 hex digits (portcullis identity add makes one)")
        groups = _groups(item.get("groups", []), at / "groups")
        result.append(Identity(name, groups, digest.lower(), context.filename))
    return tuple(result)


def _groups(value: Any, where: Where) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
        where.fail("groups must be a list of non-empty strings")
    return frozenset(value)


def load_identities_file(path: str | Path) -> dict[str, Any]:
    """Read a file with ``identities:`` and/or ``jwt:``. Raises RuleFileError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError([Problem(str(path), 1, 1, "", f"cannot read identities file: {exc}")]) from None
    return compile_identities_file(text, str(path), path.parent)


def compile_identities_file(text: str, filename: str, base_dir: Path) -> dict[str, Any]:
    data, source = parse(text, filename)
    top = source.at()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RuleFileError([top.problem("an identities file must be a mapping with 'identities' and/or 'jwt'")])
    context = LoadContext(base_dir, filename)
    compilers = {"identities": compile_identities, "jwt": compile_jwt}
    problems: list[Problem] = []
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key not in compilers:
            problems.append((top / key).problem(f"unknown key {key!r}; expected identities or jwt"))
            continue
        try:
            settings[key] = compilers[key](value, top / key, context)
        except Invalid as exc:
            problems.append(exc.problem)
    if problems:
        raise RuleFileError(problems)
    return settings


# --- authentication ------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    groups: frozenset[str]
    method: str  # basic | jwt | anonymous
    expires: float | None = None  # JWT exp (epoch seconds)
    token_sha256: str | None = field(default=None, repr=False)


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS, frozenset(), "anonymous")


class AuthFailure(Exception):
    """Credentials were missing or not accepted. ``problem`` is machine-readable."""

    def __init__(self, problem: str, reason: str, status: int = 407) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason
        self.status = status


_JWT_PROBLEMS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet (nbf/iat)"),
    (jwt.InvalidAudienceError, "wrong_audience", "the token is not meant for this gateway (aud)"),
    (jwt.InvalidIssuerError, "wrong_issuer", "the token comes from an issuer this gateway does not trust"),
    (jwt.InvalidSignatureError, "bad_signature", "the token signature does not verify"),
    (jwt.MissingRequiredClaimError, "malformed", "the token lacks a required claim"),
    (jwt.InvalidAlgorithmError, "unsupported_algorithm", "the token's algorithm is not accepted"),
)

#: Compared against when the name is unknown, so a wrong name costs what a wrong token costs.
_DUMMY_DIGEST = hashlib.sha256(b"portcullis-no-such-identity").hexdigest()


class Authenticator:
    """Checks one ``Proxy-Authorization`` value against the configured identities and JWT."""

    def __init__(self, identities: Iterable[Identity] = (), jwt_config: JwtConfig | None = None,
                 configured: bool | None = None) -> None:
        self.identities: dict[str, Identity] = {i.name: i for i in identities}
        self.jwt = jwt_config
        self.configured = bool(self.identities or jwt_config) if configured is None else configured

    @property
    def schemes(self) -> list[str]:
        return ["Basic"] + (["Bearer"] if self.jwt else [])

    async def authenticate(self, header: str | None) -> Principal:
        if not self.configured:
            return ANONYMOUS_PRINCIPAL
        if not header or not header.strip():
            raise AuthFailure("missing", "proxy credentials are required: send Proxy-Authorization "
                              "(e.g. http://NAME:TOKEN@gateway as the proxy URL)")
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            return await self.verify_jwt(credentials)
        if scheme.lower() != "basic":
            raise AuthFailure("unsupported_scheme", f"unsupported scheme {scheme[:20]!r}; use Basic or Bearer")
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthFailure("malformed", "Basic credentials are not valid base64 of NAME:TOKEN") from None
        name, sep, token = decoded.partition(":")
        if not sep or not name or not token:
            raise AuthFailure("malformed", "Basic credentials must be NAME:TOKEN")
        if name == JWT_USER:
            return await self.verify_jwt(token)
        return self.verify_token(name, token)

    def verify_token(self, name: str, token: str) -> Principal:
        identity = self.identities.get(name)
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        expected = identity.token_sha256 if identity else _DUMMY_DIGEST
        if not hmac.compare_digest(digest, expected) or identity is None:
            raise AuthFailure("unknown", "unknown identity or wrong token")
        return Principal(identity.name, identity.groups, "basic", token_sha256=identity.token_sha256)

    async def verify_jwt(self, token: str) -> Principal:
        config = self.jwt
        if config is None:
            raise AuthFailure("unsupported_scheme", "this gateway does not accept JWTs")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthFailure("malformed", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in config.algorithms:
            raise AuthFailure("unsupported_algorithm",
                              f"token algorithm must be one of {', '.join(config.algorithms)}")
        try:
            key = await config.keys.key_for(header.get("kid"))
        except JwksUnavailable as exc:
            log.error("%s", exc)
            raise AuthFailure("jwks_unavailable", "the gateway cannot load the identity provider's keys "
                              "right now", status=503) from None
        if key is None:
            raise AuthFailure("unknown_key", "the token's signing key (kid) is not in the key set")
        if key.algorithm_name != alg:
            raise AuthFailure("unsupported_algorithm", "the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=config.audience, issuer=config.issuer,
                leeway=config.leeway, options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            for kind, problem, reason in _JWT_PROBLEMS:
                if isinstance(exc, kind):
                    raise AuthFailure(problem, reason) from None
            raise AuthFailure("malformed", "the token could not be decoded") from None
        name = claims.get(config.identity_claim)
        if not isinstance(name, str) or not name:
            raise AuthFailure("malformed", f"the token has no {config.identity_claim!r} claim")
        return Principal(name, _claim_groups(claims.get(config.groups_claim)), "jwt",
                         expires=float(claims["exp"]))

    def revalidate(self, principal: Principal) -> Principal:
        """A principal bound to a connection earlier: still acceptable under the current
        configuration? Revoked tokens and expired JWTs stop working on open tunnels too."""
        if principal.method == "anonymous":
            if self.configured:
                raise AuthFailure("missing", "proxy credentials are now required; reconnect with them")
            return principal
        if principal.method == "basic":
            identity = self.identities.get(principal.name)
            if identity is None or identity.token_sha256 != principal.token_sha256:
                raise AuthFailure("unknown", "this identity or token was revoked")
            return Principal(identity.name, identity.groups, "basic", token_sha256=identity.token_sha256)
        if self.jwt is None:
            raise AuthFailure("unsupported_scheme", "this gateway no longer accepts JWTs")
        if principal.expires is not None and time.time() > principal.expires + self.jwt.leeway:
            raise AuthFailure("expired", "the token has expired; reconnect with a fresh one")
        return principal


def _claim_groups(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str) and v)
    return frozenset()


def merge(sources: Mapping[str, Mapping[str, Any]]) -> Authenticator:
    """One Authenticator from the settings of several files. Raises ValueError on conflicts."""
    identities: dict[str, Identity] = {}
    jwt_config: tuple[str, JwtConfig] | None = None
    configured = False
    for filename, settings in sources.items():
        configured = configured or "identities" in settings or "jwt" in settings
        for identity in settings.get("identities", ()):
            if identity.name in identities:
                raise ValueError(f"identity {identity.name!r} is defined in both "
                                 f"{identities[identity.name].source} and {filename}")
            identities[identity.name] = identity
        if "jwt" in settings:
            if jwt_config is not None:
                raise ValueError(f"jwt is configured in both {jwt_config[0]} and {filename}")
            jwt_config = (filename, settings["jwt"])
    return Authenticator(identities.values(), jwt_config[1] if jwt_config else None, configured)


# --- the addon -------------------------------------------------------------------------


class IdentityAddon:
    name = "portcullis_identity"

    def __init__(self, states: FlowStates) -> None:
        self.states = states
        self.authenticator = Authenticator()
        self.from_rules: dict[str, Any] = {}
        self.from_file: dict[str, Any] = {}
        self.rules_name = "rules file"
        self.file: Path | None = None
        self._signature: tuple[int, int, int] | None = None
        self._watcher: asyncio.Task | None = None
        self._running = False
        #: Client connections that authenticated on CONNECT; their tunnels carry the identity.
        self.bound: weakref.WeakKeyDictionary[connection.Client, Principal] = weakref.WeakKeyDictionary()

    def load(self, loader) -> None:
        register_options(loader, OPTIONS)

    def configure(self, updated: set[str]) -> None:
        if "portcullis_identities" not in updated:
            return
        self.file = Path(ctx.options.portcullis_identities) if ctx.options.portcullis_identities else None
        self.from_file = {}
        if self.file is not None:
            try:
                self.from_file = load_identities_file(self.file)
            except RuleFileError as exc:
                raise exceptions.OptionsError(f"invalid identities file:\n{exc}") from None
            self._signature = _signature(self.file)
        try:
            self._rebuild()
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None

    def policy_loaded(self, policy: Policy) -> None:
        """Called by the policy addon on every (re)load of the rules file."""
        previous = (self.from_rules, self.rules_name)
        self.from_rules = {k: policy.settings[k] for k in ("identities", "jwt") if k in policy.settings}
        self.rules_name = policy.source
        try:
            self._rebuild()
        except ValueError as exc:
            self.from_rules, self.rules_name = previous
            if not self._running:  # start-up: refuse to start
                raise exceptions.OptionsError(str(exc)) from None
            log.error("identities in the reloaded rules file rejected; the previous ones stay: %s", exc)

    def _rebuild(self) -> None:
        sources = {self.rules_name: self.from_rules}
        if self.file is not None:
            sources[str(self.file)] = self.from_file
        self.authenticator = merge(sources)

    def running(self) -> None:
        self._running = True
        if self._watcher is None and self.file is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        await poll_forever(self.reload_if_changed, RELOAD_INTERVAL_S, f"identities file {self.file}", log)

    def reload_if_changed(self) -> bool:
        """Pick up `portcullis identity add` and revocations without a restart."""
        if self.file is None or _signature(self.file) == self._signature:
            return False
        self._signature = _signature(self.file)
        previous = self.from_file
        try:
            self.from_file = load_identities_file(self.file)
            self._rebuild()
        except (RuleFileError, ValueError) as exc:
            self.from_file = previous
            log.error("identities file edit rejected; the previous identities stay in force:\n%s", exc)
            return False
        except Exception:  # noqa: BLE001 - a loader bug must not end reloading (or pass silently)
            self.from_file = previous  # the authenticator was not replaced: merge() raised first
            log.exception("identities file %s could not be loaded; the previous identities stay in force",
                          self.file)
            return False
        log.info("reloaded identities from %s", self.file)
        return True

    def banner(self) -> list[str]:
        auth = self.authenticator
        if not auth.configured:
            return ["identity: anonymous (no identities configured)"]
        count = len(auth.identities)
        parts = [f"{count} token {'identity' if count == 1 else 'identities'}"]
        if auth.jwt:
            parts.append(f"JWTs from {auth.jwt.issuer}")
        return [f"identity: proxy credentials required ({', '.join(parts)})"]

    # --- hooks -----------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        header = _take_credentials(flow)
        try:
            principal = await self.authenticator.authenticate(header)
        except AuthFailure as failure:
            self._refuse(flow, failure)
            return
        # Every request in this tunnel is made by this caller (like mitmproxy's proxyauth).
        self.bound[flow.client_conn] = principal
        _assign(self.states.of(flow), principal)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        header = _take_credentials(flow)
        if flow.is_replay:
            return  # the gateway itself re-sends it; whoever replays sets the identity
        try:
            bound = self.bound.get(flow.client_conn)
            if bound is not None:
                principal = self.authenticator.revalidate(bound)
            else:
                principal = await self.authenticator.authenticate(header)
        except AuthFailure as failure:
            self._refuse(flow, failure)
            return
        _assign(self.states.of(flow), principal)

    def _refuse(self, flow: http.HTTPFlow, failure: AuthFailure) -> None:
        state = self.states.of(flow)
        state.decision = "blocked"
        state.reason = f"proxy authentication failed: {failure.problem}"
        state.emit("auth_failed", problem=failure.problem)
        peer = flow.client_conn.peername
        log.info("proxy authentication failed (%s) for client %s", failure.problem,
                 f"{peer[0]}:{peer[1]}" if peer else "?")
        challenge = ", ".join(f'{s} realm="{REALM}"' for s in self.authenticator.schemes)
        error = "proxy_authentication_required" if failure.status == 407 else "identity_unavailable"
        reply(flow, failure.status, error, "blocked", headers={"Proxy-Authenticate": challenge},
              problem=failure.problem, reason=failure.reason)


def _take_credentials(flow: http.HTTPFlow) -> str | None:
    """Read and remove Proxy-Authorization: it must never travel further or be recorded."""
    headers = flow.request.headers
    values = headers.get_all(AUTH_HEADER)
    if values:
        del headers[AUTH_HEADER]
    # Several headers cannot be told apart safely: joined, they fail to parse (malformed).
    return ", ".join(values) if values else None


def _assign(state: FlowState, principal: Principal) -> None:
    state.identity = principal.name
    state.groups = principal.groups


