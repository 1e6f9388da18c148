"""Logging in and out, who the current reviewer is, CSRF tokens and the login rate limits.

Browsers authenticate with a session cookie (Secure, HttpOnly, SameSite=Strict) and
must send the session's CSRF token with every POST (form field ``csrf_token`` or header
``X-CSRF-Token``). API clients send ``Authorization: Bearer <token>`` instead; a bearer
token cannot be sent by a cross-site page, so it needs no CSRF token.

The cookie carries only a session id; the session itself is on the server
(review_ui.session_store), so logout and expiry end it for every copy of the cookie.
Failed logins are throttled per (name, address) pair, so one reviewer's typos never lock
out another, plus a looser cap per address against trying many names.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from addons.holds.book import Actor
from review_ui.errors import api_error
from review_ui.reviewers import Reviewer
from review_ui.services import services
from review_ui.session_store import SessionStore

bp = Blueprint("auth", __name__)

#: Failed logins allowed per (reviewer name, client address) pair within LOGIN_WINDOW_S: one
#: reviewer's typos, or someone guessing one reviewer's password, lock out only that pair.
LOGIN_ATTEMPTS = 5
#: Failed logins allowed per client address (any names) in the window: against spraying
#: many names from one address. Looser, because every local reviewer shares 127.0.0.1.
ADDRESS_ATTEMPTS = 30
LOGIN_WINDOW_S = 60.0
#: Longest reviewer name the rate limiter keys on (longer input cannot be a valid name).
NAME_KEY_MAX = 200


class RateLimit:
    """Sliding-window failure counts per key; a key is blocked at ``attempts`` failures."""

    def __init__(self, attempts: int, window: float) -> None:
        self.attempts, self.window = attempts, window
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                failures = self._failures.get(key)
                if failures is None:
                    continue
                while failures and failures[0] < now - self.window:
                    failures.popleft()
                if not failures:
                    del self._failures[key]  # keep memory bounded by recent failures
                elif len(failures) >= self.attempts:
                    return True
        return False

    def fail(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures[key].append(time.monotonic())

    def clear(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


class PgRateLimit:
    """RateLimit's interface over PostgreSQL (``--state postgresql://…``): failures counted
    across every gateway of the cluster, so spreading guesses over gateways gains nothing.
    ``pool`` is an addons.holds.pgschema.Pool. PostgreSQL unreachable: ``blocked`` says
    yes (fail closed; the login page answers 429 until it is back)."""

    def __init__(self, attempts: int, window: float, pool: Any, scope: str) -> None:
        self.attempts, self.window, self.pool, self.scope = attempts, window, pool, scope

    def blocked(self, *keys: str) -> bool:
        now = time.time()
        try:
            with self.pool.connection() as conn:
                for key in keys:
                    row = conn.execute("SELECT count(*) FROM portcullis_login_failures WHERE key = %s AND at > %s",
                                       (f"{self.scope}:{key}", now - self.window)).fetchone()
                    if row is not None and row[0] >= self.attempts:
                        return True
        except Exception:  # noqa: BLE001 - no shared state, no login
            return True
        return False

    def fail(self, *keys: str) -> None:
        now = time.time()
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM portcullis_login_failures WHERE at < %s", (now - self.window,))
            for key in keys:
                conn.execute("INSERT INTO portcullis_login_failures (key, at) VALUES (%s, %s)",
                             (f"{self.scope}:{key}", now))

    def clear(self, *keys: str) -> None:
        with self.pool.connection() as conn:
            for key in keys:
                conn.execute("DELETE FROM portcullis_login_failures WHERE key = %s", (f"{self.scope}:{key}",))


pair_limit = RateLimit(LOGIN_ATTEMPTS, LOGIN_WINDOW_S)
address_limit = RateLimit(ADDRESS_ATTEMPTS, LOGIN_WINDOW_S)


def pg_login_limits(pool: Any) -> tuple[PgRateLimit, PgRateLimit]:
    """The (pair, address) limits in PostgreSQL, for ``app.extensions["portcullis_login_limits"]``."""
    return (PgRateLimit(LOGIN_ATTEMPTS, LOGIN_WINDOW_S, pool, "pair"),
            PgRateLimit(ADDRESS_ATTEMPTS, LOGIN_WINDOW_S, pool, "address"))


def login_limits() -> tuple[Any, Any]:
    """This app's (pair, address) limits: the shared ones if set, else this process's."""
    return current_app.extensions.get("portcullis_login_limits") or (pair_limit, address_limit)


def sessions() -> SessionStore:
    """The server-side session table of this app (see review_ui.session_store)."""
    return current_app.extensions["portcullis_sessions"]


def credential_of(reviewer: Reviewer) -> str:
    """What a session is bound to besides the name: the stored password hash (digested)."""
    return hashlib.sha256((reviewer.password_hash or "").encode()).hexdigest()


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok() -> bool:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def current_actor() -> Actor | None:
    """The reviewer making this request (bearer token or session), or None."""
    if "actor" in g:
        return g.actor
    actor = None
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        reviewer = services().reviewers.by_token(header[7:].strip())
        g.via_token = True
    else:
        # The cookie holds only a session id; the server decides whether it is still live.
        session_id = session.get("sid")
        record = sessions().get(session_id) if isinstance(session_id, str) else None
        reviewer = services().reviewers.get(record.reviewer) if record else None
        if record is not None and (reviewer is None or credential_of(reviewer) != record.credential):
            sessions().delete(record.id)  # removed from the reviewers file, or a new password
            reviewer = None
        g.via_token = False
    if reviewer is not None:
        actor = Actor(reviewer.name, reviewer.groups)
    g.actor = actor
    return actor


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """For pages: unauthenticated visitors go to the login page; POSTs need the CSRF token."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_actor() is None or g.via_token:
            return redirect(url_for("auth.login", next=request.full_path))
        if request.method == "POST" and not csrf_ok():
            abort(403, "The form was stale or did not come from this page (CSRF token mismatch). "
                       "Reload the page and try again.")
        return view(*args, **kwargs)

    return wrapped


def api_auth_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """For the JSON API: 401 without credentials; cookie-authenticated writes need CSRF."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_actor() is None:
            return api_error(401, "unauthenticated",
                             "log in or send Authorization: Bearer <reviewer token>")
        if request.method not in ("GET", "HEAD") and not g.via_token and not csrf_ok():
            return api_error(403, "csrf", "missing or wrong X-CSRF-Token header")
        return view(*args, **kwargs)

    return wrapped


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    target = request.values.get("next") or url_for("queue.index")
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("queue.index")  # never redirect off-site
    if request.method == "GET":
        return render_template("login.html", next=target)
    if not csrf_ok():
        abort(403, "The login form was stale (CSRF token mismatch). Reload the page and try again.")
    name = request.form.get("name", "").strip()
    address = request.remote_addr or "?"
    pair = f"{name[:NAME_KEY_MAX]}\x1f{address}"
    pair_limit, address_limit = login_limits()
    if pair_limit.blocked(pair) or address_limit.blocked(address):
        return render_template("login.html", next=target, name=name,
                               error="Too many failed attempts. Wait a minute and try again."), 429
    reviewer = services().reviewers.authenticate(name, request.form.get("password", ""))
    if reviewer is None:
        pair_limit.fail(pair)
        address_limit.fail(address)
        return render_template("login.html", next=target, name=name,
                               error="Unknown reviewer or wrong password."), 401
    pair_limit.clear(pair)
    previous = session.get("sid")
    if isinstance(previous, str):
        sessions().delete(previous)  # signing in again ends the session this browser had
    session.clear()
    session["sid"] = sessions().create(reviewer.name, credential_of(reviewer))
    session["csrf"] = secrets.token_urlsafe(32)
    flash(f"Signed in as {reviewer.name}.")
    return redirect(target)


@bp.route("/logout", methods=["POST"])
@login_required
def logout() -> Any:
    session_id = session.get("sid")
    if isinstance(session_id, str):
        sessions().delete(session_id)  # a copy of the cookie stops working too
    session.clear()
    return redirect(url_for("auth.login"))
