"""All Portcullis addons, in the order they must see each flow.

Used by ``portcullis run`` and loadable into plain mitmproxy::

    mitmdump -s addons/portcullis.py --set portcullis_rules=rules/default.yaml

Order matters: identity first (who is calling), then policy (decide), approvals (hold),
credentials (inject only into what will be forwarded), masking, and recording last so
that it stores what the agent actually received.
"""

from __future__ import annotations

import addons.schema  # noqa: F401  (registers every package's rules keys)
from addons.core.dispatch import Dispatcher
from addons.core.events import EventBus
from addons.core.flowstate import FlowStates
from addons.core.gcfreeze import GcFreezeAddon
from addons.core.loopbridge import LoopBridge
from addons.credentials.addon import CredentialsAddon
from addons.guards.clienttimeouts import ClientTimeoutsAddon
from addons.guards.hostcheck import HostCheckAddon
from addons.guards.requestguard import RequestGuardAddon
from addons.guards.requestlimits import RequestLimitsAddon
from addons.guards.tunnelguard import TunnelGuardAddon
from addons.guards.wsguard import WebSocketGuardAddon
from addons.holds.addon import ApprovalsAddon
from addons.holds.notify import NotifyAddon
from addons.holds.pgaddon import SharedStateAddon
from addons.holds.pgdesk import ClusterDesk
from addons.holds.pgstore import PgHoldStore
from addons.identity.addon import IdentityAddon
from addons.masking.addon import MaskingAddon
from addons.mcp.addon import McpAddon
from addons.policy.addon import PolicyAddon
from addons.recorder.addon import RecorderAddon
from addons.replay.addon import ReplayAddon
from addons.upstreams.addon import UpstreamsAddon
from addons.upstreams.errors import UpstreamErrorsAddon
from review_ui.auth import pg_login_limits
from review_ui.server_addon import ReviewServerAddon
from review_ui.session_store import PgSessionStore


def make_addons() -> list[object]:
    """What mitmproxy loads: one :class:`Dispatcher` that calls :func:`members` in order.

    One addon in mitmproxy's chain instead of two dozen: mitmproxy's per-addon cost of
    every event (about 1.3 us per addon per event, ~0.2 ms per request) is paid once
    (addons/core/dispatch.py). Each member is still registered under its own name.
    """
    return [Dispatcher(members())]


def members() -> list[object]:
    """A fresh set of Portcullis addons, wired together, in hook order.

    All of them share one :class:`FlowStates` registry (and through it one event bus);
    collaborators are passed to constructors, never looked up by name at run time.
    """
    states = FlowStates(EventBus())
    bridge = LoopBridge()  # the one way other threads (UI, notifications) reach the event loop
    policy = PolicyAddon(states)
    identity = IdentityAddon(states)
    mcp = McpAddon(states, policy)
    store = PgHoldStore()  # memory (the default) until --state names a PostgreSQL server
    shared = SharedStateAddon(states, store, policy)
    approvals = ApprovalsAddon(states, policy, store=store, bridge=bridge, mcp=mcp)
    # Decisions commit in PostgreSQL first when the state is shared (addons.holds.pgdesk).
    approvals.desk = ClusterDesk(approvals.book, bridge, store, approvals.secrets_of)
    credentials = CredentialsAddon(states)
    masking = MaskingAddon(states)
    upstreams = UpstreamsAddon()
    recorder = RecorderAddon(states)
    replay = ReplayAddon(states, recorder, identity, bridge)
    ui = ReviewServerAddon(states, approvals.desk, recorder, upstreams, replayer=replay,
                           shared=lambda: _shared_ui(shared))
    # Addons configured by the rules file learn of every (re)load from the policy addon.
    policy.listeners += [identity.policy_loaded, credentials.policy_loaded,
                         masking.policy_loaded, upstreams.policy_loaded]
    return [
        ClientTimeoutsAddon(),  # closes agent connections stalled before headers, or idle
        RequestLimitsAddon(states),  # oversized header sections never reach the other addons
        RequestGuardAddon(states),  # CR/LF/NUL, obs-fold, method override, trailers: before any rule
        identity,  # who is calling: before the policy, which matches on it
        shared,  # --state: connects before the UI is configured (its sessions may live there)
        ui,  # serves the review UI; refuses proxied requests to it
        HostCheckAddon(states),  # Host header / SNI must name the target the rules will see
        mcp,  # JSON-RPC denial shapes, Mcp-Method/Mcp-Name vs body, tools/list filtering
        policy,
        mcp.batches,  # each element of a JSON-RPC batch judged alone: the strongest verdict
        WebSocketGuardAddon(states),  # upgrades on masked routes are refused; messages tallied
        shared.guard,  # shared state unreachable: requests that need approval are refused (503)
        approvals,  # holds: awaits the reviewer inside its request hook
        shared.closer,  # after approvals' shutdown expiry: commit it, stop the state's threads
        NotifyAddon(states, approvals.desk, policy, ui),  # webhooks about holds, off the event loop
        credentials,  # only flows that will be forwarded get secrets
        masking,  # after credentials, before the recorder: it records the masked version
        mcp.streams,  # a streamed SSE tools/list result is filtered (after masking chose to stream)
        replay,  # re-sends recorded requests through all of the above
        upstreams,
        UpstreamErrorsAddon(states),  # JSON 502/504 for upstream faults; times forwarded requests
        TunnelGuardAddon(states),  # CONNECT tunnels carry TLS/HTTP only, never raw TCP
        recorder,  # last: it stores what the agent actually received
        approvals.relays,  # after all: an approved held-stream call's response, relayed to its stream
        GcFreezeAddon(),  # last `running`: what startup built leaves the GC's scans (gc.freeze)
    ]


def _shared_ui(shared: SharedStateAddon) -> dict[str, object]:
    """The review UI's sessions, cookie key and login limits in PostgreSQL, when shared."""
    pool = shared.store.pool
    if not shared.store.shared or pool is None:
        return {}
    return {"session_store": PgSessionStore(pool), "secret_key": shared.ui_secret_key(),
            "login_limits": pg_login_limits(pool)}


addons = make_addons()
