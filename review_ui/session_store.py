"""Reviewer sessions kept on the server, so that logging out (or expiry) really ends them.

The session cookie is Flask's signed cookie; it carries only a random session id (and
the CSRF token). Who is signed in, and until when, lives here: a cookie copied before
logout is refused afterwards because its id is gone, and a session ends on the server
after ``IDLE_S`` without use or ``LIFETIME_S`` after sign-in, whatever the cookie says.

``SessionStore`` is the small interface the UI needs; ``MemorySessionStore`` is the
embedded default (sessions end with the gateway process, which is the safe direction).
A shared store (e.g. a PostgreSQL table) implements the same four methods.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: A session ends this long after sign-in, used or not.
LIFETIME_S = 12 * 3600.0
#: ... or after this long without a request.
IDLE_S = 2 * 3600.0
#: Live sessions kept at most; beyond this the least recently used are ended first.
MAX_SESSIONS = 10_000


@dataclass
class SessionRecord:
    id: str
    reviewer: str
    created_at: float
    last_seen: float
    #: A fingerprint of the credential used to sign in: when it changes (new password),
    #: the UI ends the session.
    credential: str = ""


class SessionStore(Protocol):
    def create(self, reviewer: str, credential: str = "") -> str:
        """Start a session for ``reviewer``; returns its id (unguessable)."""

    def get(self, session_id: str) -> SessionRecord | None:
        """The live session with this id (and mark it used), or None if unknown or expired."""

    def delete(self, session_id: str) -> None:
        """End the session (logout). Unknown ids are ignored."""

    def delete_reviewer(self, reviewer: str) -> int:
        """End every session of ``reviewer`` (e.g. removed from the reviewers file)."""


class MemorySessionStore:
    """Sessions in this process's memory, thread-safe (Flask serves from several threads)."""

    def __init__(self, lifetime: float = LIFETIME_S, idle: float = IDLE_S, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime, self.idle, self.max_sessions, self.clock = lifetime, idle, max_sessions, clock
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionRecord] = {}  # insertion order = least recently used first

    def create(self, reviewer: str, credential: str = "") -> str:
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= self.max_sessions:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session_id] = SessionRecord(session_id, reviewer, now, now, credential)
        return session_id

    def get(self, session_id: str) -> SessionRecord | None:
        now = self.clock()
        with self._lock:
            record = self._sessions.get(session_id)
            if record is None:
                return None
            if self._expired(record, now):
                del self._sessions[session_id]
                return None
            record.last_seen = now
            self._sessions[session_id] = self._sessions.pop(session_id)  # most recently used last
            return record

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def delete_reviewer(self, reviewer: str) -> int:
        with self._lock:
            ids = [sid for sid, record in self._sessions.items() if record.reviewer == reviewer]
            for sid in ids:
                del self._sessions[sid]
            return len(ids)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _expired(self, record: SessionRecord, now: float) -> bool:
        return now - record.created_at >= self.lifetime or now - record.last_seen >= self.idle

    def _expire(self, now: float) -> None:
        """Drop idle sessions from the least recently used end, stopping at the first one used
        within ``idle`` (all later ones were used more recently). A session past its lifetime
        but still in use is ended by ``get``."""
        for sid in list(self._sessions):
            record = self._sessions[sid]
            if now - record.last_seen < self.idle:
                break  # every later one was used more recently
            del self._sessions[sid]


class PgSessionStore:
    """Sessions in PostgreSQL (``--state postgresql://…``), so that every gateway of a
    cluster knows them: sign in on one, be signed in behind any, log out everywhere.

    ``pool`` is an addons.holds.pgschema.Pool; called from the UI's request threads
    (never the event loop). Times are wall-clock seconds, since several hosts compare
    them. PostgreSQL unreachable: ``get`` answers None (signed out, the safe direction)
    and ``create`` raises, which the login page shows as a server error.
    """

    def __init__(self, pool: Any, lifetime: float = LIFETIME_S, idle: float = IDLE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.pool, self.lifetime, self.idle, self.clock = pool, lifetime, idle, clock

    def create(self, reviewer: str, credential: str = "") -> str:
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM portcullis_sessions WHERE created_at < %s OR last_seen < %s",
                         (now - self.lifetime, now - self.idle))
            conn.execute("INSERT INTO portcullis_sessions (id, reviewer, created_at, last_seen, credential) "
                         "VALUES (%s, %s, %s, %s, %s)", (session_id, reviewer, now, now, credential))
        return session_id

    def get(self, session_id: str) -> SessionRecord | None:
        now = self.clock()
        try:
            with self.pool.connection() as conn:
                row = conn.execute(
                    "UPDATE portcullis_sessions SET last_seen = %s WHERE id = %s AND created_at > %s "
                    "AND last_seen > %s RETURNING id, reviewer, created_at, last_seen, credential",
                    (now, session_id, now - self.lifetime, now - self.idle)).fetchone()
        except Exception:  # noqa: BLE001 - the database down means nobody is signed in
            return None
        return SessionRecord(*row) if row is not None else None

    def delete(self, session_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM portcullis_sessions WHERE id = %s", (session_id,))

    def delete_reviewer(self, reviewer: str) -> int:
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM portcullis_sessions WHERE reviewer = %s", (reviewer,)).rowcount
