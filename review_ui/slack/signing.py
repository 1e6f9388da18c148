"""Slack's request signing (https://api.slack.com/authentication/verifying-requests-from-slack).

Slack signs every callback: ``X-Slack-Signature: v0=<hex HMAC-SHA256>`` of
``v0:<X-Slack-Request-Timestamp>:<raw body>`` under the app's signing secret. A request
is accepted only when that matches (compared in constant time) and its timestamp is
within five minutes of now; within that window, :class:`SeenSignatures` refuses the
same signed request a second time, so a captured click cannot be replayed at all.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

#: Slack's own replay window: a timestamp further than this from now is refused.
REPLAY_WINDOW_S = 300
VERSION = "v0"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack sends for ``body`` at ``timestamp``."""
    base = f"{VERSION}:{timestamp}:".encode() + body
    return f"{VERSION}=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def refusal(secret: str, timestamp: str | None, sent: str | None, body: bytes, now: float) -> str | None:
    """Why this callback is not Slack's (never the secret), or None when it is."""
    if not timestamp or not sent:
        return "missing X-Slack-Request-Timestamp or X-Slack-Signature"
    if not timestamp.isdigit() or len(timestamp) > 12:
        return "X-Slack-Request-Timestamp is not a Unix time"
    if abs(now - int(timestamp)) > REPLAY_WINDOW_S:
        return f"the request is more than {REPLAY_WINDOW_S // 60} minutes old (or from the future)"
    if not hmac.compare_digest(signature(secret, timestamp, body).encode(), sent.strip().encode()):
        return "the signature does not match"
    return None


class SeenSignatures:
    """Signatures accepted in the last window: the same signed request is taken once."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first(self, sent: str, now: float) -> bool:
        """True the first time ``sent`` is seen within the window (and remember it)."""
        with self._lock:
            for old in [s for s, at in self._seen.items() if at < now - 2 * REPLAY_WINDOW_S]:
                del self._seen[old]
            if sent in self._seen:
                return False
            self._seen[sent] = now
            return True
