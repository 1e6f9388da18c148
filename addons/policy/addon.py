"""The policy addon: evaluate the YAML rules on every request; block what they forbid.

Options:
    portcullis_rules: path of the rules file (hot-reloaded on change).

It records its verdict in the flow's FlowState (``decision``, ``rules``, ``reason``)
and in ``state.verdict`` for later addons (holds, masking, credentials).
A ``hold`` verdict is left for the approvals addon; without one loaded, holds block.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from mitmproxy import ctx, exceptions, http
from mitmproxy.utils import human

from addons.core.filewatch import poll_forever
from addons.core.flowstate import CONTROL_HEADER_PREFIX, FlowState, FlowStates
from addons.core.options import Option, register_options
from addons.core.replies import DECISION_HEADER, FLOW_ID_HEADER, reply
from addons.core.rulefile import RuleFileError
from addons.policy.conditions import EvaluationError, RequestView
from addons.policy.engine import Policy, Verdict, load_policy

log = logging.getLogger("portcullis.policy")

#: How often the rules file is checked for changes (hot reload must apply within 2 s).
RELOAD_INTERVAL_S = 0.5


OPTIONS = (
    Option("portcullis_rules", str, "", "YAML rules file (docs/rules.md).", flag="--rules", path=True),
)


class PolicyAddon:
    name = "portcullis_policy"

    def __init__(self, states: FlowStates, *, holds_enabled: bool = True) -> None:
        self.states = states
        #: False when no holds addon follows (tests of the policy alone): holds then block.
        self.holds_enabled = holds_enabled
        self.policy: Policy | None = None
        self.rules_path: Path | None = None
        self._signature: tuple[int, int, int] | None = None
        self._watcher: asyncio.Task | None = None
        self.listeners: list = []  # callables(policy) told about every successful (re)load

    def load(self, loader) -> None:
        register_options(loader, OPTIONS)

    def configure(self, updated: set[str]) -> None:
        if "portcullis_rules" not in updated:
            return
        if not ctx.options.portcullis_rules:
            self.policy = None
            self.rules_path = None
            return
        path = Path(ctx.options.portcullis_rules)
        try:
            policy = load_policy(path)
        except RuleFileError as exc:
            # At start-up a bad file is fatal: mitmproxy reports OptionsError and exits.
            raise exceptions.OptionsError(f"invalid rules file:\n{exc}") from None
        self.rules_path = path
        self._signature = _signature(path)
        self._install(policy)

    def banner(self) -> list[str]:
        if self.policy is None:
            return ["rules:    none loaded (every request is blocked)"]
        return [f"rules:    {self.policy.source} ({len(self.policy.rules)} rules, default {self.policy.default})"]

    def running(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _install(self, policy: Policy) -> None:
        self.policy = policy
        log.info("loaded %d rules from %s (default: %s)", len(policy.rules), policy.source, policy.default)
        for listener in self.listeners:
            if self._watcher is None:
                listener(policy)  # start-up: a listener's OptionsError must stop the gateway
                continue
            try:
                listener(policy)
            except Exception:  # noqa: BLE001 - one listener's failure must not skip the others
                log.exception("applying the reloaded rules file %s failed in %r", policy.source, listener)

    async def _watch(self) -> None:
        await poll_forever(self.reload_if_changed, RELOAD_INTERVAL_S, f"rules file {self.rules_path}", log)

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; keep the last good rules if the edit is invalid."""
        if self.rules_path is None:
            return False
        signature = _signature(self.rules_path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            policy = load_policy(self.rules_path)
        except RuleFileError as exc:
            log.error("rules file edit rejected; the previous rules stay in force:\n%s", exc)
            return False
        except Exception:  # noqa: BLE001 - a loader bug must not end hot reload (or pass silently)
            log.exception("rules file %s could not be loaded; the previous rules stay in force",
                          self.rules_path)
            return False
        self._install(policy)
        return True

    # --- hooks ---------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Stop request bodies mitmproxy would stream to the upstream before `request`.

        With mitmproxy's ``stream_large_bodies`` set, bodies over that size (and chunked
        bodies, which may grow over it) are forwarded while they arrive, and the request
        hook, where rules run, fires only afterwards: the policy could not stop them.
        mitmproxy cannot answer such a request early without crashing its stream state,
        so the connection is closed instead: fail closed, and say why in the log.
        """
        limit = ctx.options.stream_large_bodies
        if not limit or flow.response is not None:
            return
        headers = flow.request.headers
        length = headers.get("content-length", "")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if chunked or (length.isdigit() and int(length) > human.parse_size(limit)):
            state = self.states.of(flow)
            state.decision = "blocked"
            state.reason = f"the request body may exceed stream_large_bodies ({limit}) and cannot be checked"
            state.emit("decided", action="block", error="request_not_checkable", reason=state.reason)
            log.warning("closed a request to %s: %s", flow.request.host, state.reason)
            flow.kill()

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return  # answered earlier in the chain (e.g. proxy authentication failed)
        state = self.states.of(flow)
        capture_control_headers(flow, state)
        if self.policy is None:
            state.decision = "blocked"
            state.reason = "no rules loaded"
            reply(flow, 403, "policy_error", "blocked", reason="no rules are loaded")
            return
        try:
            verdict = self.policy.evaluate(RequestView(flow, state.identity, state.groups, state=state))
        except Exception as exc:  # noqa: BLE001 - any failure inside policy evaluation blocks
            log.error("policy evaluation failed for %s %s: %s", flow.request.method, flow.request.pretty_url, exc)
            # EvaluationError says what about the request was ambiguous (types, not values),
            # which the agent needs to fix it; other failures are internal and stay generic.
            known = isinstance(exc, EvaluationError)
            code = exc.error_code if known else "policy_error"
            state.decision = "blocked"
            state.reason = f"policy evaluation failed: {exc}"
            state.emit("decided", action="block", error=code, reason=state.reason)
            reply(flow, 400 if code == "unsupported_charset" else 403, code, "blocked",
                  reason=str(exc) if known else "the policy could not be evaluated for this request")
            return
        self.apply(flow, verdict)

    def apply(self, flow: http.HTTPFlow, verdict: Verdict) -> None:
        state = self.states.of(flow)
        state.verdict = verdict
        state.rules = verdict.rule_names
        state.reason = verdict.reason if verdict.rule else None
        state.emit("decided", action=verdict.action, rules=state.rules,
                   rule=verdict.rule.name if verdict.rule else None)
        if verdict.action == "allow":
            state.decision = "allowed"
        elif verdict.action == "block" or not self.holds_enabled:
            state.decision = "blocked"
            reason = verdict.reason if verdict.action == "block" else "hold rules need the approvals addon"
            state.reason = reason
            reply(flow, 403, "blocked_by_policy", "blocked",
                  rule=verdict.rule.name if verdict.rule else None, reason=reason)
        # "hold": the approvals addon (next in the chain) takes over.

    def response(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        state = self.states.of(flow)
        if state.forwarded:
            # The response is the upstream's (gateway replies never leave a flow
            # forwarded), and an upstream must not speak for the gateway.
            headers = flow.response.headers
            for name in [n for n in headers if n.lower().startswith(CONTROL_HEADER_PREFIX)]:
                del headers[name]
            headers[DECISION_HEADER] = state.decision or "allowed"
        flow.response.headers.setdefault(FLOW_ID_HEADER, flow.id)


def capture_control_headers(flow: http.HTTPFlow, state: FlowState) -> None:
    """Move X-Portcullis-* request headers into the flow state and strip them."""
    headers = flow.request.headers
    for name in [n for n in headers if n.lower().startswith(CONTROL_HEADER_PREFIX)]:
        state.control.setdefault(name.lower(), headers[name])
        del headers[name]
    session = state.control.get("x-portcullis-session")
    if session and state.session_id is None:
        state.session_id = session[:200]


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
