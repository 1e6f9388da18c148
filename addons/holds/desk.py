"""The reviewers' desk: the one thread-safe way into the hold book.

The review UI runs in werkzeug threads, notifications in a pool; the
:class:`~addons.holds.book.HoldBook` is not thread safe and belongs to the proxy's
event loop. :class:`HoldDesk` runs every read and decision on that loop through the
:class:`~addons.core.loopbridge.LoopBridge` (at once when already on it) and hands back
plain dicts, copied there, so no caller ever holds a record another thread mutates.

``slack`` is the Slack app (:class:`addons.holds.notify.SlackApp`) when the rules file
configures one: the review UI's Slack endpoint verifies interactions with its signing
secret and answers through it. None otherwise.

It also turns the audit events about holds into the review UI's live feed
(:meth:`HoldDesk.watch`): ``held``, ``updated`` (a vote, an escalation), ``decided`` with
the hold's summary, and ``grants`` when a grant is made, used or revoked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from addons.core.events import Event, EventKind
from addons.core.loopbridge import LoopBridge, LoopBusy, LoopNotRunning
from addons.holds.book import Actor, DecisionError, HoldBook

log = logging.getLogger("portcullis.approvals")

#: A live-feed listener: (feed kind, payload). Called on the event loop; must not block.
FeedListener = Callable[[str, dict[str, Any]], None]

_FEED_KINDS = {
    EventKind.HELD: "held",
    EventKind.APPROVAL: "updated",
    EventKind.ESCALATED: "updated",
    EventKind.APPROVED: "decided",
    EventKind.REJECTED: "decided",
    EventKind.EXPIRED: "decided",
    EventKind.ABANDONED: "decided",
    EventKind.GRANT_USED: "grants",
    EventKind.GRANT_REVOKED: "grants",
}


class HoldDesk:
    """Thread-safe reads and decisions on a hold book (see the module docstring)."""

    def __init__(self, book: HoldBook, bridge: LoopBridge,
                 secrets_of: Callable[[str], set[str]] = lambda _hold_id: set()) -> None:
        self.book = book
        self.bridge = bridge
        #: The values injected into a held flow (never offered in a body download).
        self.secrets_of = secrets_of
        #: Set by the notifications addon (see the module docstring).
        self.slack: Any = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self.bridge.call(fn, *args)
        except LoopNotRunning:
            raise DecisionError(503, "gateway_not_running", "the gateway is not running") from None
        except LoopBusy as exc:
            raise DecisionError(503, "gateway_busy", str(exc)) from None

    # --- reading -------------------------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        """Pending holds, most urgent first."""
        return self._call(self.book.queue)

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._call(self.book.history, limit)

    def grants(self) -> list[dict[str, Any]]:
        return self._call(self.book.active_grants)

    def grant(self, grant_id: str) -> dict[str, Any] | None:
        """One live grant (scope and uses), or None when expired, revoked or unknown."""
        return self._call(self.book.grant, grant_id)

    def find(self, flow_id: str) -> dict[str, Any] | None:
        """The hold's summary, or None when there is no such hold."""

        def read() -> dict[str, Any] | None:
            hold = self.book.find(flow_id)
            return hold.summary() if hold is not None else None

        return self._call(read)

    def get(self, flow_id: str) -> dict[str, Any]:
        """A held flow as the API and the review page show it, with its events (or 404)."""

        def read() -> dict[str, Any]:
            hold = self.book.get(flow_id)
            return {**hold.details(), "events": self.book.events_of(flow_id)}

        return self._call(read)

    def events_of(self, flow_id: str) -> list[dict[str, Any]]:
        return self._call(self.book.events_of, flow_id)

    def may_decide(self, flow_id: str, actor: Actor) -> tuple[bool, str | None]:
        return self._call(self.book.may_decide, flow_id, actor)

    def held_body(self, flow_id: str) -> tuple[bytes, str]:
        """The exact bytes of a pending hold and their SHA-256, for the download.

        410 once decided (the bytes are dropped); 409 when they contain a value the
        gateway injected (that must never reach a reviewer).
        """

        def read() -> tuple[bytes | None, str, str, set[str]]:
            hold = self.book.get(flow_id)
            return hold.raw, hold.body_sha256, hold.decision or "pending", set(self.secrets_of(flow_id))

        raw, digest, status, secrets = self._call(read)
        if raw is None:
            raise DecisionError(410, "body_released", f"flow {flow_id} is {status}: its body is no longer kept")
        if any(secret.encode("utf-8", "surrogateescape") in raw for secret in secrets if secret):
            raise DecisionError(409, "body_contains_secret",
                                "the body holds an injected credential and is not offered")
        return raw, digest

    def slack_message(self, flow_id: str) -> dict[str, str] | None:
        """Where the hold's Slack message is (``{"channel", "ts"}``), or None if not posted."""

        def read() -> dict[str, str] | None:
            hold = self.book.find(flow_id)
            return dict(hold.slack_message) if hold is not None and hold.slack_message else None

        return self._call(read)

    def note_slack_message(self, flow_id: str, channel: str, ts: str) -> dict[str, Any] | None:
        """Keep the posted message's place on the hold record (shared with the cluster
        through the store); the hold's summary now, or None when it is gone."""

        def note() -> dict[str, Any] | None:
            hold = self.book.note_slack_message(flow_id, channel, ts)
            return hold.summary() if hold is not None else None

        return self._call(note)

    # --- deciding --------------------------------------------------------------------

    def approve(self, flow_id: str, actor: Actor, comment: str = "",
                grant_s: float | None = None, via: str | None = None) -> dict[str, Any]:
        """Approve (with a grant of ``grant_s`` seconds, if given); the hold's summary after.
        ``via``: where the decision came from (``ui``, ``api``, ``cli``, ``slack``)."""
        return self._call(lambda: self.book.approve(flow_id, actor, comment, grant_s, via).summary())

    def reject(self, flow_id: str, actor: Actor, comment: str = "", via: str | None = None) -> dict[str, Any]:
        return self._call(lambda: self.book.reject(flow_id, actor, comment, via).summary())

    def revoke(self, grant_id: str, actor: Actor) -> dict[str, Any]:
        """Revoke a grant at once; the grant as it was."""
        return self._call(lambda: self.book.revoke(grant_id, actor).to_json())

    # --- the live feed ---------------------------------------------------------------

    def watch(self, listener: FeedListener) -> Callable[[], None]:
        """Tell ``listener`` about every change to a hold or grant; returns the unwatch."""

        def on_event(event: Event) -> None:
            feed = _FEED_KINDS.get(event.kind)
            if feed is None:
                return
            try:
                if feed == "grants":
                    listener("grants", {})
                    return
                hold = self.book.find(event.flow_id)
                if hold is None:
                    return
                if event.kind == EventKind.APPROVED and hold.grant_id is not None:
                    listener("grants", {})
                listener(feed, hold.summary())
            except Exception:  # noqa: BLE001 - a broken UI feed must not break the data path
                log.exception("hold feed listener failed")

        self.book.bus.subscribe(on_event)
        return lambda: self.book.bus.unsubscribe(on_event)
