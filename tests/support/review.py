"""A gateway with hold rules, reviewers and its review UI, for the approvals tests.

One ``ReviewRig`` per test module (a gateway start costs about a second): a real
gateway subprocess with ``--ui`` and ``--reviewers``, a real upstream, agents calling
through the proxy from threads (a held call blocks), reviewers using the JSON API with
their bearer tokens or a browser.
"""

from __future__ import annotations

import hashlib
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from review_ui.reviewers import add_reviewer
from tests.support.gateway import GatewayProcess, free_port
from tests.support.upstream import UpstreamServer

#: name -> groups. "alice" is also an agent identity (for the self-approval test).
REVIEWERS = {
    "alice": ["finance-leads"],
    "bob": ["finance-leads"],
    "carol": ["security-oncall"],
    "dave": ["support"],
}
PASSWORD_SUFFIX = "-correct-horse"
AGENT_TOKENS = {"alice": "alice-agent-token-0123456789", "billing-agent": "billing-token-0123456789"}

RULES = """
version: 1
default: allow
hold_timeout: {hold_timeout}
identities:
{identities}
rules:
  - name: refunds
    match: {{method: POST, path: /v1/refunds}}
    action: hold
    reason: "Refunds over $100 need a finance lead"
    approvers: [finance-leads]
    grant: 15m
    grant_unsafe_methods: true   # a POST: grants are offered only because the rule says so
  - name: payouts
    match: {{method: POST, path: /v1/payouts}}
    action: hold
    reason: "Payouts need two finance leads"
    approvers: [finance-leads]
    approvals_required: 2
  - name: quick
    match: {{path: /v1/quick}}
    action: hold
    reason: "Expires quickly"
    timeout: 2s
  - name: escalating
    match: {{path: /v1/escalate}}
    action: hold
    reason: "Escalates to security after a second"
    approvers: [finance-leads]
    escalate_after: 1s
    escalate_to: [security-oncall]
  - name: any-reviewer
    match: {{path: /v1/anyone}}
    action: hold
    reason: "Any reviewer may decide"
  - name: money-movement   # no action: only shown to reviewers as context
    match: {{method: POST, path: /v1/refunds}}
    reason: "Moves customer money"
"""


def rules_text(extra: str = "", hold_timeout: str = "30s") -> str:
    identities = "\n".join(
        f"  - {{name: {name}, groups: [agents], token_sha256: {hashlib.sha256(token.encode()).hexdigest()}}}"
        for name, token in AGENT_TOKENS.items()
    )
    return RULES.format(identities=identities, hold_timeout=hold_timeout) + textwrap.dedent(extra)


class ReviewRig:
    def __init__(self, directory: Path, confdir: Path, extra_rules: str = "",
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 hold_timeout: str = "30s") -> None:
        self.directory = directory
        self.reviewers_file = directory / "reviewers.yaml"
        self.tokens: dict[str, str] = {}
        for name, groups in REVIEWERS.items():
            _, token = add_reviewer(self.reviewers_file, name, groups, name + PASSWORD_SUFFIX)
            assert token is not None
            self.tokens[name] = token
        rules = directory / "rules.yaml"
        rules.write_text(rules_text(extra_rules, hold_timeout))
        self.ui_port = free_port()
        self.upstream = UpstreamServer().start()
        self.gateway = GatewayProcess(rules, confdir, [
            "--ui", f"127.0.0.1:{self.ui_port}", "--reviewers", str(self.reviewers_file), *extra_args,
        ], env).start()
        self.pool = ThreadPoolExecutor(max_workers=16)
        self.http = requests.Session()
        self.http.trust_env = False  # reviewers talk to the UI directly, never via the proxy

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def stop(self) -> None:
        self.gateway.stop_soon()  # exit awaited later (tests.support.gateway.reap)
        self.upstream.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- reviewers ---------------------------------------------------------------------

    def api(self, reviewer: str | None, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if reviewer is not None:
            headers["Authorization"] = f"Bearer {self.tokens[reviewer]}"
        return self.http.request(method, self.ui_url + path, headers=headers, timeout=10, **kwargs)

    def approve(self, reviewer: str, flow_id: str, comment: str = "", **extra: Any) -> requests.Response:
        return self.api(reviewer, "POST", f"/api/flows/{flow_id}/approve", json={"comment": comment, **extra})

    def reject(self, reviewer: str, flow_id: str, comment: str = "not this one") -> requests.Response:
        return self.api(reviewer, "POST", f"/api/flows/{flow_id}/reject", json={"comment": comment})

    def sign_in(self, page: Any, name: str, start: str = "/") -> Any:
        """Log a browser page in as ``name`` through the login form, starting at ``start``
        (the login page sends the reviewer back there)."""
        page.set_default_timeout(10_000)
        page.goto(self.ui_url + start)
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", name + PASSWORD_SUFFIX)
        page.click("button[type=submit]")
        return page

    def flow(self, flow_id: str, reviewer: str = "alice") -> dict[str, Any]:
        response = self.api(reviewer, "GET", f"/api/flows/{flow_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_held(self, path: str, timeout: float = 10, exclude: set[str] | None = None) -> dict[str, Any]:
        """The pending hold of a request to ``path`` (the newest not in ``exclude``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = self.api("alice", "GET", "/api/pending").json()["pending"]
            found = [h for h in pending if h["url"].endswith(path) and h["flow_id"] not in (exclude or set())]
            if found:
                return max(found, key=lambda h: h["created_at"])
            time.sleep(0.05)
        raise AssertionError(f"no hold for {path} appeared")

    def wait_for(self, check: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := check():
                return result
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    # --- agents --------------------------------------------------------------------------

    def proxies(self, identity: str | None = None) -> dict[str, str]:
        auth = f"{identity}:{AGENT_TOKENS[identity]}@" if identity else ""
        url = f"http://{auth}127.0.0.1:{self.gateway.port}"
        return {"http": url, "https": url}

    def call(self, method: str, path: str, identity: str | None = "billing-agent", timeout: float = 40,
             **kwargs: Any) -> requests.Response:
        """One agent request through the gateway to the upstream (blocks while held)."""
        with requests.Session() as session:
            session.trust_env = False
            return session.request(method, self.upstream.url(path), proxies=self.proxies(identity),
                                   timeout=timeout, **kwargs)

    def agent(self, method: str, path: str, identity: str | None = "billing-agent", **kwargs: Any) -> Future:
        """Start an agent call in the background; its result is the agent's response."""
        return self.pool.submit(self.call, method, path, identity, **kwargs)

    def received(self, path: str) -> list:
        return [r for r in self.upstream.received if r.path == path]
