"""The reviewers file: who may decide held requests, in which groups, with which secrets.

Format (written by ``portcullis reviewer add``; only hashes are ever stored)::

    reviewers:
      - name: alice
        groups: [finance-leads]
        password: scrypt$16384$8$1$<salt>$<hash>
        tokens:
          - id: 3f9a1c2e
            hash: scrypt$16384$8$1$<salt>$<hash>
        slack_user: U0123ABCD      # optional: decides from Slack's buttons as alice

``slack_user`` maps a Slack member id to the reviewer (review_ui.slack): a click on
Approve or Reject in Slack is that reviewer's decision, under the same rules. One Slack
member id may belong to one reviewer only.

API tokens look like ``pcr_<id>_<secret>``: the id finds the stored hash without
trying every reviewer, the secret is checked against the scrypt hash. A verified token
is remembered in memory (by its SHA-256) so that API calls do not pay scrypt each time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from addons.core.rulefile import AliasRefused, NoAliasLoader

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
TOKEN_PREFIX = "pcr_"
#: A Slack member id (users are U..., Enterprise Grid users W...).
SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,30}")

log = logging.getLogger("portcullis.review_ui")


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Constant-time check of ``secret`` against a ``hash_secret`` value."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


#: Verified against when the user name (or token id) is unknown, so that timing does not
#: reveal who exists: verify_secret runs scrypt with these parameters, salt and digest
#: length, the same work as for a reviewer's own hash, whatever the digest is. All zeros
#: (the answer for an unknown name is no, whatever verify_secret says): hashing a random
#: secret here instead cost every gateway start 50 ms of scrypt.
_DUMMY_HASH = (f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$"
               f"{base64.b64encode(bytes(16)).decode()}${base64.b64encode(bytes(32)).decode()}")


@dataclass(frozen=True)
class Reviewer:
    name: str
    groups: frozenset[str]
    password_hash: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # token id -> hash
    slack_user: str | None = None  # a Slack member id (decisions from Slack)


class ReviewersError(Exception):
    pass


def parse_reviewers(text: str, source: str = "<reviewers>") -> dict[str, Reviewer]:
    try:
        # Anchors and aliases are refused like in rules files (see addons.core.rulefile).
        data = yaml.load(text, Loader=NoAliasLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except AliasRefused as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ReviewersError(f"{where}: {exc.problem}") from None
    if not isinstance(data, dict) or not isinstance(data.get("reviewers", []), list):
        raise ReviewersError(f"{source}: expected a mapping with a 'reviewers' list")
    result: dict[str, Reviewer] = {}
    for i, item in enumerate(data.get("reviewers") or []):
        where = f"{source}: reviewers[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ReviewersError(f"{where}: every reviewer needs a name")
        groups = item.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ReviewersError(f"{where}.groups: expected a list of group names")
        tokens = {}
        for token in item.get("tokens") or []:
            if not isinstance(token, dict) or not {"id", "hash"} <= set(token):
                raise ReviewersError(f"{where}.tokens: each token needs an id and a hash")
            tokens[str(token["id"])] = str(token["hash"])
        if item["name"] in result:
            raise ReviewersError(f"{where}.name: duplicate reviewer {item['name']!r}")
        slack_user = item.get("slack_user")
        if slack_user is not None:
            if not isinstance(slack_user, str) or not SLACK_USER.fullmatch(slack_user):
                raise ReviewersError(f"{where}.slack_user: expected a Slack member id like U0123ABCD")
            taken = next((r.name for r in result.values() if r.slack_user == slack_user), None)
            if taken is not None:
                raise ReviewersError(f"{where}.slack_user: {slack_user} is already {taken}'s")
        result[item["name"]] = Reviewer(item["name"], frozenset(groups), item.get("password"), tokens, slack_user)
    return result


def dump_reviewers(reviewers: dict[str, Reviewer]) -> str:
    items = []
    for r in reviewers.values():
        item: dict = {"name": r.name, "groups": sorted(r.groups)}
        if r.password_hash:
            item["password"] = r.password_hash
        if r.tokens:
            item["tokens"] = [{"id": k, "hash": v} for k, v in r.tokens.items()]
        if r.slack_user:
            item["slack_user"] = r.slack_user
        items.append(item)
    return yaml.safe_dump({"reviewers": items}, sort_keys=False)


def add_reviewer(
    path: str | Path, name: str, groups: list[str], password: str | None = None,
    token: bool = True, replace: bool = False, slack_user: str | None = None,
) -> tuple[str, str | None]:
    """Add (or with ``replace``, overwrite) a reviewer. Returns (password, token) in clear,
    the only time they exist outside the reviewer's hands. A replaced reviewer keeps its
    ``slack_user`` unless another is given."""
    path = Path(path)
    reviewers = parse_reviewers(path.read_text(), str(path)) if path.exists() else {}
    if name in reviewers and not replace:
        raise ReviewersError(f"reviewer {name!r} already exists in {path} (use --replace)")
    password = password or secrets.token_urlsafe(15)
    tokens: dict[str, str] = {}
    clear_token = None
    if token:
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        tokens[token_id] = hash_secret(secret)
        clear_token = f"{TOKEN_PREFIX}{token_id}_{secret}"
    if slack_user is None and name in reviewers:
        slack_user = reviewers[name].slack_user
    reviewers[name] = Reviewer(name, frozenset(g for g in groups if g), hash_secret(password), tokens, slack_user)
    parse_reviewers(dump_reviewers(reviewers), str(path))  # refuse what could not be read back
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_reviewers(reviewers))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return password, clear_token


class ReviewerStore:
    """The reviewers file, re-read when it changes (adding a reviewer needs no restart)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._reviewers: dict[str, Reviewer] = {}
        self._verified_tokens: dict[bytes, str] = {}  # sha256(token) -> reviewer name
        if self.path is not None:
            self._reviewers = parse_reviewers(self.path.read_text(), str(self.path))
            self._signature = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)  # type: ignore[arg-type]
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reviewers(self) -> dict[str, Reviewer]:
        if self.path is None:
            return {}
        with self._lock:
            signature = self._stat()
            if signature != self._signature:
                try:
                    self._reviewers = parse_reviewers(self.path.read_text(), str(self.path))
                    self._verified_tokens.clear()  # a removed token must stop working
                except (OSError, ReviewersError, yaml.YAMLError) as exc:
                    # Keep the last good file, and say so once per edit (not on every request).
                    log.error("reviewers file %s edit rejected; the previous reviewers stay: %s",
                              self.path, exc)
                self._signature = signature
            return self._reviewers

    def get(self, name: str) -> Reviewer | None:
        return self.reviewers().get(name)

    def by_slack_user(self, user_id: str) -> Reviewer | None:
        """The reviewer whose ``slack_user`` is ``user_id`` (a verified Slack callback's user)."""
        if not user_id:
            return None
        return next((r for r in self.reviewers().values() if r.slack_user == user_id), None)

    def authenticate(self, name: str, password: str) -> Reviewer | None:
        reviewer = self.get(name)
        stored = reviewer.password_hash if reviewer and reviewer.password_hash else _DUMMY_HASH
        ok = verify_secret(password, stored)
        return reviewer if ok and reviewer is not None and reviewer.password_hash else None

    def by_token(self, token: str) -> Reviewer | None:
        reviewers = self.reviewers()
        key = hashlib.sha256(token.encode()).digest()
        cached = self._verified_tokens.get(key)
        if cached is not None:
            return reviewers.get(cached)
        if not token.startswith(TOKEN_PREFIX) or token.count("_") < 2:
            return None
        token_id, _, secret = token[len(TOKEN_PREFIX):].partition("_")
        for reviewer in reviewers.values():
            stored = reviewer.tokens.get(token_id)
            if stored is not None and verify_secret(secret, stored):
                self._verified_tokens[key] = reviewer.name
                return reviewer
        verify_secret(secret, _DUMMY_HASH)
        return None
