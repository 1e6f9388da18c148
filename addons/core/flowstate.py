"""Per-flow state shared by the Portcullis addons, and the audit event stream.

Each addon reads and writes one :class:`FlowState` per flow (identity, decision,
matched rules, injected secrets, ...). It is kept outside ``flow.metadata`` on purpose:
metadata is copied into replays and serialised with saved flows, and this state must
be neither.

Things that happen to a flow are published with :meth:`FlowState.emit`; the recorder
subscribes and writes them to the ``events`` table as they happen.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

#: Headers that carry Portcullis protocol data from the agent; always stripped before
#: forwarding so they can neither leak upstream nor be forged towards us by upstreams.
CONTROL_HEADER_PREFIX = "x-portcullis-"


@dataclass(frozen=True)
class Event:
    flow_id: str
    kind: str
    at: float
    actor: str
    detail: dict[str, Any]


EventListener = Callable[[Event], None]
_listeners: list[EventListener] = []


def subscribe(listener: EventListener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def unsubscribe(listener: EventListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


@dataclass
class FlowState:
    flow_id: str
    identity: str = "anonymous"
    groups: frozenset[str] = frozenset()
    session_id: str | None = None
    decision: str | None = None
    rules: list[str] = field(default_factory=list)
    reason: str | None = None
    error: str | None = None
    replay_of: str | None = None
    actor: str | None = None
    #: Values the gateway itself injected (credentials): never recorded, never shown.
    secrets: set[str] = field(default_factory=set)
    #: Header names the gateway injected; redacted in recordings.
    injected_headers: set[str] = field(default_factory=set)
    #: Control headers the agent sent (X-Portcullis-*), read before they are stripped.
    control: dict[str, str] = field(default_factory=dict)
    masked: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def forwarded(self) -> bool:
        return self.decision in ("allowed", "approved")

    def emit(self, kind: str, actor: str = "gateway", **detail: Any) -> Event:
        event = Event(self.flow_id, kind, time.time(), actor, detail)
        for listener in list(_listeners):
            listener(event)
        return event


_states: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()


def state_of(flow: http.HTTPFlow) -> FlowState:
    """The Portcullis state of a flow, created on first use."""
    state = _states.get(flow)
    if state is None:
        state = _states[flow] = FlowState(flow.id)
    return state


def has_state(flow: http.HTTPFlow) -> bool:
    return flow in _states
