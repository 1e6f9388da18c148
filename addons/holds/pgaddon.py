"""``--state``: where the hold book, reviewer sessions and login throttling live.

Empty (or ``memory``, the default): this process's memory, as before. A
``postgresql://`` DSN: PostgreSQL 15+, shared by every gateway pointed at it (see
addons.holds.pgstore for how, docs/deploy-state.md for running it).

Three small addons, placed in the chain where their hook must run:

* :class:`SharedStateAddon` (before the review UI): connects and migrates in
  ``configure`` (a bad DSN or a down server stops the start with a clear error), starts
  the store's threads in ``running``, and in ``done`` narrows what the store calls
  pending to this gateway's own wait-mode holds, so that the approvals addon's shutdown
  expiry closes only the connections this process holds (async holds live on);
* :attr:`SharedStateAddon.guard` (after the policy, before approvals): fail closed.
  While PostgreSQL is unreachable, a request that needs approval is refused at once
  with JSON 503 ``shared_state_unavailable`` (addons.core.replies.refuse) instead of
  becoming a hold nobody else can see; other requests pass. It recovers by itself when
  the store's threads reach PostgreSQL again. An async agent's collection
  (``X-Portcullis-Approval``) is first claimed in PostgreSQL, in a worker thread, with
  the identity, request print and verdict it must match, so that of two gateways
  collecting one approval at once exactly one forwards;
* :attr:`SharedStateAddon.closer` (after approvals): commits what is queued, marks this
  gateway stopped and stops the threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from mitmproxy import ctx, exceptions, http

from addons.core.events import EventBus
from addons.core.flowstate import FlowStates
from addons.core.options import Option, register_options
from addons.core.replies import refuse
from addons.holds.addon import APPROVAL_HEADER
from addons.holds.binding import RequestPrint, VerdictPrint
from addons.holds.pgcodec import encode
from addons.holds.pgdriver import psycopg, require
from addons.holds.pgschema import SchemaTooNew, describe_dsn, shared_secret
from addons.holds.pgstore import PgHoldStore
from addons.holds.spec import hold_spec

log = logging.getLogger("portcullis.state")

OPTIONS = (
    Option("portcullis_state", str, "",
           "Where holds, grants, reviewer sessions and login throttling live: 'memory' (this process, "
           "the default) or a postgresql:// URL (PostgreSQL 15+), shared by every gateway given it.",
           flag="--state", metavar="memory|postgresql://…"),
)

UI_COOKIE_KEY = "review_ui_cookie_key"


def is_postgres(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


class SharedStateAddon:
    name = "portcullis_state"

    def __init__(self, states: FlowStates, store: PgHoldStore, policy: Any = None) -> None:
        """``policy``: the policy addon (its ``policy`` attribute), for the verdict an async
        collection is checked against; None: collections are not claimed ahead."""
        self.states = states
        self.store = store
        self.guard = StateGuard(states, store, policy)
        self.closer = StateCloser(store)
        self._ui_key: bytes | None = None
        self.started = False  # ``running`` has run: from then on the state cannot change

    def load(self, loader: Any) -> None:
        register_options(loader, OPTIONS)

    def configure(self, updated: set[str]) -> None:
        if "portcullis_state" not in updated:
            return
        value = (ctx.options.portcullis_state or "").strip()
        if value in ("", "memory"):
            if self.store.shared:
                if self.started:
                    raise exceptions.OptionsError("portcullis_state cannot change while the gateway runs")
                # Before running(): mitmproxy rolling back a start that failed in another
                # option. Raising here would replace the real cause the operator must see;
                # the start fails with it anyway.
                log.debug("portcullis_state: start rolled back after PostgreSQL opened")
            return
        if not is_postgres(value):
            raise exceptions.OptionsError(
                "portcullis_state must be 'memory' or a postgresql:// URL (e.g. postgresql://portcullis@db/portcullis)")
        if self.store.shared:
            if value != self.store.dsn:
                raise exceptions.OptionsError("portcullis_state cannot change while the gateway runs")
            return
        try:
            require()
        except ImportError as exc:
            raise exceptions.OptionsError(f"portcullis_state: PostgreSQL needs psycopg, which cannot be imported: {exc}") from None
        try:
            self.store.open(value)
            assert self.store.pool is not None
            self._ui_key = shared_secret(self.store.pool, UI_COOKIE_KEY)  # once: UI rebuilds need no query
        except (psycopg.Error, SchemaTooNew) as exc:
            raise exceptions.OptionsError(
                f"portcullis_state: cannot use PostgreSQL at {describe_dsn(value)}: {exc}".strip()) from None
        log.info("shared state in PostgreSQL at %s (this gateway: %s)", describe_dsn(value), self.store.gateway_id)

    def running(self) -> None:
        self.started = True
        if self.store.shared:
            bus: EventBus = self.states.bus
            self.store.start(asyncio.get_running_loop(), bus)

    def done(self) -> None:
        self.store.closing = True

    # --- for the review UI (wired in addons/portcullis.py) ---------------------------------

    def ui_secret_key(self) -> bytes | None:
        """The cookie signing key every gateway's UI shares (None: in memory, per process)."""
        return self._ui_key if self.store.shared else None


class StateGuard:
    """Refuses requests that need approval while the shared state is unavailable, and
    claims an async approval in PostgreSQL before the approvals addon collects it."""

    name = "portcullis_state_guard"

    def __init__(self, states: FlowStates, store: PgHoldStore, policy: Any = None) -> None:
        self.states, self.store, self.policy = states, store, policy

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync on the common path; a coroutine (awaited by mitmproxy) only for a collection."""
        if not self.store.shared or flow.response is not None or flow.error is not None:
            return None
        state = self.states.of(flow)
        if state.verdict is None or state.verdict.action != "hold":
            return None
        try:
            healthy = self.store.healthy
        except Exception:  # noqa: BLE001 - cannot tell: refuse, never hold unseen
            log.exception("shared state health check failed")
            healthy = False
        if not healthy:
            self._unavailable(flow, state)
            return None
        hold_id = state.control.get(APPROVAL_HEADER, "").strip()
        if hold_id and self.policy is not None:
            return self._claim(flow, state, hold_id[:200])
        return None

    async def _claim(self, flow: http.HTTPFlow, state: Any, hold_id: str) -> None:
        """Single use across gateways: the first collection to commit wins."""
        verdict = state.verdict
        spec = hold_spec(verdict.rule, self.policy.policy, verdict.reason)
        binding, printed = encode(RequestPrint.of(flow.request)), encode(VerdictPrint.of(verdict, spec))
        try:
            claimed, row = await asyncio.to_thread(self.store.claim_collection, hold_id, state.identity,
                                                   binding, printed)
        except psycopg.Error:
            self._unavailable(flow, state)
            return
        self.store.take_claim(claimed, row)

    @staticmethod
    def _unavailable(flow: http.HTTPFlow, state: Any) -> None:
        refuse(flow, state, 503, "shared_state_unavailable",
               "this request needs a reviewer's approval and the shared approval queue (PostgreSQL) cannot "
               "be reached; nothing was forwarded, retry shortly", headers={"Retry-After": "5"})


class StateCloser:
    """Last of the three at shutdown: commit, mark this gateway stopped, stop the threads."""

    name = "portcullis_state_closer"

    def __init__(self, store: PgHoldStore) -> None:
        self.store = store

    def done(self) -> None:
        self.store.close()
