"""The audit event stream: every kind of event declared once, and the bus that carries them.

Things that happen to a flow (it arrived, a rule decided, a reviewer voted, a value was
masked) are published as :class:`Event` on one :class:`EventBus`. The recorder writes
them to the ``events`` table, the holds keep them for the review page, notifications
turn some into webhooks. The bus is created once in ``make_addons()`` and passed to
whoever publishes or subscribes; nothing reaches it through a global.

Each kind is a member of :class:`EventKind` with a one-line summary. That declaration is
the only list: publishing an undeclared kind raises at once, and ``docs/recording.md``
is checked against it (``tests/test_docs.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    """Every kind of audit event, with what it means. Members compare equal to their names."""

    summary: str

    def __new__(cls, value: str, summary: str) -> EventKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.summary = summary
        return member

    RECEIVED = "received", "The request arrived and was journalled, before it went anywhere."
    AUTH_FAILED = "auth_failed", "The agent's proxy credentials were missing or invalid (407)."
    DECIDED = "decided", "A guard or the policy decided: action, matched rules, or the refusal's error code."
    CLASSIFIED = "classified", "A SQL statement or GraphQL operation in the body was classified for the rules."
    HELD = "held", "The request is held for review: rule, approvers, timeout, mode (wait or async)."
    APPROVAL = "approval", "One reviewer approved; more approvals are still needed."
    APPROVED = "approved", "The hold was approved (enough reviewers agreed)."
    REJECTED = "rejected", "A reviewer rejected the hold."
    EXPIRED = "expired", "Nobody decided in time, or the gateway stopped: the request is denied."
    ABANDONED = "abandoned", "The agent hung up while held; the request is never forwarded."
    ESCALATED = "escalated", "The hold waited past escalate_after; the escalation groups may now decide."
    DECISION_REFUSED = "decision_refused", "A reviewer's decision was refused (wrong group, own request, already decided)."
    APPROVAL_USED = "approval_used", "An async hold's approval was collected by the identical re-sent request."
    APPROVAL_MISMATCH = "approval_mismatch", "A request tried to use an approval or grant it does not match."
    GRANT_USED = "grant_used", "An identical request passed under a reviewer's grant."
    GRANT_REVOKED = "grant_revoked", "A reviewer revoked a grant."
    CREDENTIALS_INJECTED = "credentials_injected", "The gateway injected an upstream credential (names only, never values)."
    FORWARDED = "forwarded", "The request was sent to the upstream."
    UPSTREAM_ERROR = "upstream_error", "The upstream failed: refused, reset, timed out, bad TLS."
    MASKED = "masked", "Values were masked in a body: rule, count, JSONPaths."
    UNMASKABLE = "unmaskable", "A body on a masked route could not be masked, and was refused (or passed by rule)."
    SECRET_ECHO_MASKED = "secret_echo_masked", "An injected credential echoed by the upstream was scrubbed."
    WEBSOCKET_OPENED = "websocket_opened", "A WebSocket connection was opened on an allowed route."
    WEBSOCKET_CLOSED = "websocket_closed", "A WebSocket connection closed: message counts and bytes per direction."
    TUNNEL_REFUSED = "tunnel_refused", "A CONNECT tunnel carried something other than TLS or HTTP and was closed."
    REPLAY_REQUESTED = "replay_requested", "A reviewer replayed a recorded flow; this flow is the replay."
    REPLAYED = "replayed", "This recorded flow was replayed (names the replay's flow id)."
    COMPLETED = "completed", "The agent received its response (status code)."
    ERROR = "error", "The flow ended in an error before a response was complete."


#: kind name -> member: ``EventKind(name)`` costs a few times more than this lookup.
KINDS: dict[str, EventKind] = {kind.value: kind for kind in EventKind}


@dataclass(frozen=True)
class Event:
    flow_id: str
    kind: EventKind
    at: float
    actor: str
    detail: dict[str, Any]


EventListener = Callable[[Event], None]


class EventBus:
    """Delivers each event to every subscriber, in order, on the publisher's thread.

    A subscriber's exception reaches the publisher (the hook that emitted): subscribers
    are the recorder and in-memory bookkeeping, and a failure there must be loud.
    """

    def __init__(self) -> None:
        # A tuple, replaced on (un)subscribe: publishing (several times per request) needs
        # no copy, and a listener that unsubscribes mid-publish does not disturb the loop.
        self._listeners: tuple[EventListener, ...] = ()

    def subscribe(self, listener: EventListener) -> None:
        if listener not in self._listeners:
            self._listeners = (*self._listeners, listener)

    def unsubscribe(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners = tuple(item for item in self._listeners if item != listener)

    def publish(self, event: Event) -> None:
        for listener in self._listeners:
            listener(event)
