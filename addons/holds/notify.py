"""Webhook notifications about holds: held, escalated, approved, rejected, expired, abandoned.

Configured in the rules file (``notify:``, see addons.holds.spec). Delivery happens on a
small thread pool, with a timeout per attempt and a few retries; failures are logged.
Nothing here ever waits on the network in the proxy's event loop.

Wired in ``make_addons()``: the event bus (what happened), the holds desk (the hold's
summary), the policy source (the webhooks configured now) and the review UI's address
(for the link in the message).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from addons.core.events import Event
from addons.core.flowstate import FlowStates
from addons.holds.desk import HoldDesk
from addons.holds.spec import NOTIFY_EVENTS, Webhook

log = logging.getLogger("portcullis.notify")

TIMEOUT_S = 5.0
ATTEMPTS = 3
BACKOFF_S = 0.5
MAX_BACKLOG = 1000


def slack_escape(value: Any) -> str:
    """``value`` as inert Slack text: ``&``, ``<``, ``>`` escaped as Slack requires
    (https://api.slack.com/reference/surfaces/formatting#escaping), so an agent's URL
    cannot ping ``<!channel>`` or render ``<https://evil.example|Approve here>`` as a
    link; line breaks become spaces, so it cannot fake a "Review:" line either."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.splitlines())


def message(kind: str, hold: dict[str, Any], link: str | None) -> str:
    """One line for humans (Slack ``text``). Every interpolated value is escaped: the URL,
    identity and rule reason may all come from the agent or an edited rules file."""
    e = slack_escape
    who = {"approved": f" by {e(hold.get('decided_by'))}",
           "rejected": f" by {e(hold.get('decided_by'))}"}.get(kind, "")
    text = (f"[Portcullis] {kind}{who}: {e(hold['method'])} {e(hold['url'])} from {e(hold['identity'])}"
            f" — {e(hold.get('reason') or hold.get('rule'))}")
    if hold.get("justification"):
        text += f" (justification: {e(hold['justification'])})"
    if kind == "escalated":
        text += f" (now also for: {e(', '.join(hold.get('escalate_to') or []))})"
    return text + (f"\nReview: {e(link)}" if link else "")


def payload(hook: Webhook, kind: str, hold: dict[str, Any], link: str | None) -> dict[str, Any]:
    if hook.format == "slack":
        return {"text": message(kind, hold, link)}
    fields = ("flow_id", "identity", "rule", "reason", "justification", "method", "url",
              "approvers", "escalate_to", "decided_by", "comment", "deadline")
    return {"event": kind, "at": time.time(), "review_url": link, **{f: hold.get(f) for f in fields}}


class NotifyAddon:
    name = "portcullis_notify"

    def __init__(self, states: FlowStates, holds: HoldDesk, policy: Any, ui: Any = None) -> None:
        self.bus = states.bus
        self.holds = holds
        #: The policy addon: ``.policy`` is the policy in force now (its ``notify`` setting).
        self.policy_source = policy
        #: The review UI addon: ``.url`` is its base URL, or None when it is off.
        self.ui = ui
        self.pool: ThreadPoolExecutor | None = None
        self._backlog = 0
        self._lock = threading.Lock()

    def running(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="portcullis-notify")
        self.bus.subscribe(self.on_event)

    def done(self) -> None:
        self.bus.unsubscribe(self.on_event)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def webhooks(self) -> list[Webhook]:
        policy = getattr(self.policy_source, "policy", None)
        return list(policy.settings.get("notify", [])) if policy is not None else []

    def review_link(self, flow_id: str) -> str | None:
        base = getattr(self.ui, "url", None)
        return f"{base}/flows/{flow_id}" if base else None

    def on_event(self, event: Event) -> None:
        """Called inside ``state.emit`` on the proxy's path: a bug here must not break it."""
        try:
            self._enqueue(event)
        except Exception:  # noqa: BLE001 - notifications are best effort, the flow is not
            log.exception("could not queue the %s notification for flow %s", event.kind, event.flow_id)

    def _enqueue(self, event: Event) -> None:
        if event.kind not in NOTIFY_EVENTS or self.pool is None:
            return
        hooks = [h for h in self.webhooks() if event.kind in h.events]
        if not hooks:
            return
        summary = self.holds.find(event.flow_id)
        if summary is None:
            return
        link = self.review_link(event.flow_id)
        for hook in hooks:
            with self._lock:
                if self._backlog >= MAX_BACKLOG:
                    log.error("notification backlog full; dropping %s for %s", event.kind, hook.url)
                    continue
                self._backlog += 1
            self.pool.submit(self._deliver, hook, payload(hook, event.kind, summary, link))

    def _deliver(self, hook: Webhook, body: dict[str, Any], attempt: int = 1) -> None:
        """One attempt (on a pool thread). A retry is scheduled, not slept on, so one
        dead webhook cannot hold the pool's threads while others wait."""
        try:
            request = urllib.request.Request(hook.url, data=json.dumps(body, default=str).encode(),
                                             method="POST", headers={"Content-Type": "application/json",
                                                                     "User-Agent": "portcullis-notify"})
            # No proxy: a webhook must not loop back through the gateway itself.
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(request, timeout=TIMEOUT_S) as response:
                problem = None if response.status < 300 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            problem = str(getattr(exc, "reason", exc))
        except Exception as exc:  # noqa: BLE001 - a pool thread's exception would vanish unlogged
            problem = f"unexpected error: {exc!r}"
        if problem is not None and attempt < ATTEMPTS and self.pool is not None:
            log.warning("webhook %s attempt %d/%d failed: %s", hook.url, attempt, ATTEMPTS, problem)
            retry = threading.Timer(BACKOFF_S * 2 ** (attempt - 1), self._retry, (hook, body, attempt + 1))
            retry.daemon = True
            retry.start()
            return
        if problem is not None:
            log.error("webhook %s: giving up after %d attempts: %s", hook.url, attempt, problem)
        with self._lock:
            self._backlog -= 1

    def _retry(self, hook: Webhook, body: dict[str, Any], attempt: int) -> None:
        pool = self.pool
        try:
            if pool is None:
                raise RuntimeError("notifications stopped")
            pool.submit(self._deliver, hook, body, attempt)
        except RuntimeError:  # shutting down
            with self._lock:
                self._backlog -= 1
