"""Per-flow state shared by the Portcullis addons: typed, and reached through one registry.

Each addon reads and writes one :class:`FlowState` per flow: who is calling, the policy's
verdict, the hold, masking tallies, the refusal. Every field is declared here, so what
one addon leaves for the next is visible in one place (no string-keyed bag).

The state is kept outside ``flow.metadata`` on purpose: metadata is copied into replays
and serialised with saved flows, and this state must be neither.

:class:`FlowStates` is the registry: ``make_addons()`` creates one, with the one
:class:`~addons.core.events.EventBus`, and passes it to every addon's constructor.
:meth:`FlowState.emit` publishes on that bus.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from addons.core.events import KINDS, Event, EventBus, EventKind

if TYPE_CHECKING:  # typing only: core imports nothing of ours at run time
    from addons.policy.engine import Verdict

#: Headers that carry Portcullis protocol data from the agent; always stripped before
#: forwarding so they can neither leak upstream nor be forged towards us by upstreams.
CONTROL_HEADER_PREFIX = "x-portcullis-"


@dataclass
class MaskingNotes:
    """What the masking addon noted between the request and the response hooks."""

    #: rule name -> tally of values masked in the request (reported with the response).
    tallies: dict[str, Any] = field(default_factory=dict)
    #: Why an unmaskable body was passed anyway (``on_unmaskable: pass``), if it was.
    passed: str | None = None
    #: (reason, rule names) when the response must be refused as unmaskable.
    refused: tuple[str, list[str]] | None = None
    #: The response streams to the agent as it arrives (masked event by event when a
    #: mask applies): there is no whole body in the response hook.
    streamed: bool = False
    #: The X-Portcullis-Masked value a streamed response was sent with, if any.
    stream_header: str | None = None


@dataclass
class SentBody:
    """The bytes of a streamed response as they were sent to the agent, for the recording.

    A streamed response has no body in the response hook (``raw_content`` is None); the
    stream callback appends what it sends here instead, up to ``limit`` bytes (the
    recording's body limit plus a margin, so redaction still sees whole secrets at the
    cut). ``size`` counts every byte sent, kept or not."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    size: int = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def complete(self) -> bool:
        return self.size == len(self.data)


@dataclass
class WebSocketTally:
    """Messages and bytes per direction of a WebSocket connection: [count, bytes]."""

    client: list[int] = field(default_factory=lambda: [0, 0])
    server: list[int] = field(default_factory=lambda: [0, 0])


@dataclass
class FlowState:
    flow_id: str
    bus: EventBus | None = field(default=None, repr=False, compare=False)
    identity: str = "anonymous"
    groups: frozenset[str] = frozenset()
    session_id: str | None = None
    #: allowed | blocked | held | approved | rejected | expired | abandoned
    decision: str | None = None
    rules: list[str] = field(default_factory=list)
    reason: str | None = None
    error: str | None = None
    replay_of: str | None = None
    actor: str | None = None
    #: The policy's verdict, for the addons after it (holds, masking, WebSockets, recorder).
    verdict: Verdict | None = None
    #: The agent's justification for a held request (X-Portcullis-Justification).
    justification: str | None = None
    #: Values the gateway itself injected (credentials): never recorded, never shown.
    secrets: set[str] = field(default_factory=set)
    #: Header names the gateway injected; redacted in recordings.
    injected_headers: set[str] = field(default_factory=set)
    #: Control headers the agent sent (X-Portcullis-*), read before they are stripped.
    control: dict[str, str] = field(default_factory=dict)
    masked: int = 0
    masking: MaskingNotes = field(default_factory=MaskingNotes)
    websocket: WebSocketTally | None = None
    #: SQL/GraphQL classifications already made for this request, by field (addons.querylang).
    classifications: dict[str, Any] = field(default_factory=dict)
    #: What a streamed response sent to the agent (addons.masking.streaming), recorded
    #: in place of the body mitmproxy did not keep.
    sent: SentBody | None = None

    @property
    def forwarded(self) -> bool:
        return self.decision in ("allowed", "approved")

    @property
    def deciding_rule(self) -> str | None:
        """The name of the rule whose action decided, if one did."""
        rule = self.verdict.rule if self.verdict is not None else None
        return rule.name if rule is not None else None

    def emit(self, kind: EventKind | str, actor: str = "gateway", **detail: Any) -> Event:
        """Publish an event about this flow. An undeclared kind raises ValueError."""
        event = Event(self.flow_id, KINDS.get(kind) or EventKind(kind), time.time(), actor, detail)
        if self.bus is not None:
            self.bus.publish(event)
        return event


class FlowStates:
    """The Portcullis state of each live flow, created on first use, gone with the flow."""

    def __init__(self, bus: EventBus | None = None) -> None:
        self.bus = bus if bus is not None else EventBus()
        self._states: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()

    def of(self, flow: http.HTTPFlow) -> FlowState:
        state = self._states.get(flow)
        if state is None:
            state = self._states[flow] = FlowState(flow.id, self.bus)
        return state

    def has(self, flow: http.HTTPFlow) -> bool:
        return flow in self._states

    def detached(self, flow_id: str) -> FlowState:
        """A state for a flow id with no live flow (a refused tunnel, a replay's original):
        only good for emitting events about it."""
        return FlowState(flow_id, self.bus)
