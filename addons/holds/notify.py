"""Notifications about holds: webhooks, and a Slack app whose buttons decide.

Webhooks (``notify:``, see addons.holds.spec): held, escalated, approved, rejected,
expired, abandoned, as JSON or one Slack text line. Delivery happens on a small thread
pool, with a timeout per attempt and a few retries; failures are logged. Nothing here
ever waits on the network in the proxy's event loop.

The Slack app (``slack:``): :class:`SlackPoster` posts each hold to the channel as a
Block Kit message (summary, rule, reason, justification, review link, Approve/Reject
buttons, each behind a confirm dialog) with ``chat.postMessage``, and rewrites it with
``chat.update`` on every change: an approval of N, an escalation, and the outcome, from
wherever it was decided (Slack, the review UI, the terminal, a timeout). Its deliveries
run on one thread, so a hold's message is posted before it is updated. Where the
message is (channel, ts) is kept on the hold record itself (``slack_message``), so with
shared state (``--state``) the gateway that took the hold posts it, once for the
cluster, and whichever gateway records a change rewrites it. The buttons'
callbacks are verified and decided by the review UI (review_ui.slack), which answers
a refused click with an ephemeral message through :meth:`SlackPoster.tell`.

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
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

from addons.core.events import Event
from addons.core.flowstate import FlowStates
from addons.core.secretforms import REDACTED, is_secret_param
from addons.holds.book import DecisionError
from addons.holds.desk import HoldDesk
from addons.holds.spec import NOTIFY_EVENTS, SlackSettings, Webhook

log = logging.getLogger("portcullis.notify")

TIMEOUT_S = 5.0
ATTEMPTS = 3
BACKOFF_S = 0.5
MAX_BACKLOG = 1000
#: The button callbacks' action ids (review_ui.slack decides them), and the callback id
#: of the modal that asks a rejecting reviewer for the comment the agent will read.
APPROVE_ACTION, REJECT_ACTION = "portcullis_approve", "portcullis_reject"
REJECT_VIEW = "portcullis_reject_comment"
COMMENT_BLOCK, COMMENT_INPUT = "reason", "comment"
#: Events that change a hold's Slack message (posted on ``held``, updated on the rest).
SLACK_EVENTS = frozenset({"held", "approval", "escalated", "approved", "rejected", "expired", "abandoned"})
#: Slack's limits: section text 3000 characters, a field 2000, a confirm dialog's text 300.
SECTION_MAX, FIELD_MAX, CONFIRM_MAX = 3000, 2000, 300
#: Holds whose Slack message this gateway posted, remembered (channel, ts) besides the
#: record: for a decision another gateway committed before the record knew the message.
MESSAGES_KEPT = 5000
#: How long a stopping gateway waits for queued Slack updates (its expired holds).
STOP_DRAIN_S = 3.0
#: Where Slack's ``response_url`` (for ephemeral answers) may point besides the Web API's host.
SLACK_RESPONSE_HOSTS = ("hooks.slack.com",)


def redacted_url(url: str) -> str:
    """``url`` with the values of secret-looking query parameters (``api_key=sk_live_...``)
    replaced by the redaction marker, as the review UI shows it: a message leaves the
    gateway for Slack's servers."""
    base, sep, query = str(url).partition("?")
    if not sep:
        return base
    pieces = []
    for piece in query.split("&"):
        name, eq, value = piece.partition("=")
        plain = urllib.parse.unquote_plus(name)
        if eq and value and is_secret_param(plain, urllib.parse.unquote_plus(value)):
            piece = f"{name}={REDACTED}"
        pieces.append(piece)
    return base + sep + "&".join(pieces)


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
    text = (f"[Portcullis] {kind}{who}: {e(hold['method'])} {e(redacted_url(hold['url']))} from {e(hold['identity'])}"
            f" — {e(hold.get('reason') or hold.get('rule'))}")
    if hold.get("justification"):
        text += f" (justification: {e(hold['justification'])})"
    if kind == "escalated":
        text += f" (now also for: {e(', '.join(hold.get('escalate_to') or []))})"
    return text + (f"\nReview: {e(link)}" if link else "")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str, limit: int = FIELD_MAX) -> dict[str, Any]:
    # verbatim: Slack neither links URLs nor resolves #channels and @names in it.
    return {"type": "mrkdwn", "text": _clip(text, limit), "verbatim": True}


def _plain(text: str, limit: int = 75) -> dict[str, Any]:
    return {"type": "plain_text", "text": _clip(text, limit), "emoji": True}


def outcome_line(hold: dict[str, Any]) -> str:
    """Where the hold stands, in one escaped line (the message's status)."""
    e = slack_escape
    status = hold["status"]
    comment = f": “{e(hold['comment'])}”" if hold.get("comment") else ""
    if status == "approved":
        after = ("the agent receives it when it re-sends" if hold.get("mode") == "async"
                 else "the request was forwarded")
        return f":white_check_mark: *Approved* by {e(hold.get('decided_by'))}{comment} — {after}"
    if status == "rejected":
        return f":x: *Rejected* by {e(hold.get('decided_by'))}{comment} — the agent received a 403"
    if status == "expired":
        why = "the gateway stopped" if hold.get("detail") in ("gateway_shutdown", "gateway_restart") \
            else "nobody decided in time"
        return f":hourglass: *Expired*: {why}"
    if status == "abandoned":
        return ":no_entry_sign: *Abandoned*: the agent hung up before a decision"
    deadline = int(hold.get("deadline") or time.time())
    fallback = time.strftime("%H:%M:%S UTC", time.gmtime(deadline))
    line = f":hourglass_flowing_sand: *Waiting for a decision* — expires <!date^{deadline}^{{time_secs}}|{fallback}>"
    if hold.get("escalated"):
        line += f"; escalated to {e(', '.join(hold.get('escalate_to') or []))}"
    return line


def slack_message(hold: dict[str, Any], link: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, Block Kit blocks) of ``hold``'s message in its present state.

    Every value from the agent or the rules file is escaped and ``verbatim``; the
    buttons carry only the flow id, and each opens a confirm dialog first."""
    e = slack_escape
    status = hold["status"]
    summary = hold.get("body_summary") or hold.get("query_summary")
    url = redacted_url(hold["url"])
    head = f"*{e(hold['method'])}* {e(url)}" + (f"\n{e(summary)}" if summary else "")
    approvals = hold.get("approvals") or []
    approvers = ", ".join(hold.get("approvers") or []) or "any reviewer"
    votes = f"{len(approvals)} of {hold.get('approvals_required', 1)}" + (
        f" ({e(', '.join(a['reviewer'] for a in approvals))})" if approvals else "")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": _mrkdwn(head, SECTION_MAX)},
        {"type": "section", "fields": [
            _mrkdwn(f"*Identity*\n{e(hold['identity'])}"),
            _mrkdwn(f"*Rule*\n{e(hold.get('rule') or 'default')}"),
            _mrkdwn(f"*Reason*\n{e(hold.get('reason') or '')}"),
            _mrkdwn(f"*Justification*\n{e(hold.get('justification') or '(none given)')}"),
            _mrkdwn(f"*May decide*\n{e(approvers)}"),
            _mrkdwn(f"*Approvals*\n{votes}"),
        ]},
        {"type": "context", "elements": [_mrkdwn(outcome_line(hold))], "block_id": f"status-{status}"},
    ]
    buttons: list[dict[str, Any]] = []
    if status == "pending":
        request = _clip(f"{e(hold['method'])} {e(url)}", CONFIRM_MAX)
        for action, label, style in ((APPROVE_ACTION, "Approve", "primary"), (REJECT_ACTION, "Reject", "danger")):
            buttons.append({"type": "button", "action_id": action, "text": _plain(label), "style": style,
                            "value": hold["flow_id"],
                            "confirm": {"title": _plain(f"{label} this request?", 100),
                                        "text": _mrkdwn(request, CONFIRM_MAX), "confirm": _plain(label),
                                        "deny": _plain("Cancel"), "style": style}})
    if link:
        buttons.append({"type": "button", "action_id": "portcullis_open", "text": _plain("Open review page"),
                        "url": link})
    if buttons:
        blocks.append({"type": "actions", "block_id": "portcullis-decide", "elements": buttons})
    kind = "held" if status == "pending" else status
    return message(kind, hold, link), blocks


def reject_view(hold: dict[str, Any], comment_max: int = 2000) -> dict[str, Any]:
    """The modal a Reject click opens: the request, and the comment the agent will read."""
    e = slack_escape
    required = hold.get("reject_comment_required", True)
    label = "Why? The agent reads this." + ("" if required else " (optional)")
    return {
        "type": "modal", "callback_id": REJECT_VIEW, "private_metadata": hold["flow_id"],
        "title": _plain("Reject request", 24), "submit": _plain("Reject", 24), "close": _plain("Cancel", 24),
        "blocks": [
            {"type": "section", "text": _mrkdwn(f"*{e(hold['method'])}* {e(redacted_url(hold['url']))}\n"
                                                f"{e(hold.get('reason') or '')}", SECTION_MAX)},
            {"type": "input", "block_id": COMMENT_BLOCK, "label": _plain(label, 2000), "optional": not required,
             "element": {"type": "plain_text_input", "action_id": COMMENT_INPUT, "multiline": True,
                         "max_length": comment_max, **({"min_length": 1} if required else {})}},
        ],
    }


class SlackPoster:
    """Posts and updates each hold's Slack message; answers refused clicks (see the module doc).

    ``settings`` returns the ``slack:`` settings in force (None: no Slack app), ``link``
    the review page of a flow. Calls from the event loop and the UI only queue work.
    """

    def __init__(self, settings: Callable[[], SlackSettings | None],
                 link: Callable[[str], str | None] = lambda _flow_id: None,
                 remember: Callable[[str, str, str], dict[str, Any] | None] = lambda *_: None) -> None:
        self.settings = settings
        self.link = link
        #: Keeps a posted message's (channel, ts) on the hold record; returns the hold's
        #: summary now (it may have changed while the post was on its way), or None.
        self.remember = remember
        self.pool: ThreadPoolExecutor | None = None
        #: flow id -> (channel, ts) of the messages this gateway posted.
        self.messages: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._queued: set[Future] = set()

    def start(self) -> None:
        if self.pool is None:
            # One thread: a hold's chat.postMessage always happens before its chat.update.
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portcullis-slack")

    def stop(self, drain_s: float = STOP_DRAIN_S) -> None:
        """Stop, after up to ``drain_s`` for the queued deliveries: the gateway expires its
        pending holds as it stops, and their messages should say so, not "waiting"."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        with self._lock:
            queued = list(self._queued)
        wait(queued, timeout=drain_s)
        pool.shutdown(wait=False, cancel_futures=True)

    def signing_secret(self) -> str | None:
        settings = self.settings()
        return settings.signing_secret.value if settings is not None else None

    def posted_here(self, flow_id: str) -> bool:
        with self._lock:
            return flow_id in self.messages

    def on_hold(self, kind: str, hold: dict[str, Any]) -> None:
        """Queue the post (``held``) or update (anything else) of ``hold``'s message;
        ``hold["slack_message"]`` (from the record) says where it is, if known."""
        settings, pool = self.settings(), self.pool
        if settings is None or pool is None or kind not in SLACK_EVENTS:
            return
        work = self._post if kind == "held" else self._update
        self._track(pool.submit(self._guarded, work, settings, hold))

    def _track(self, future: Future) -> None:
        with self._lock:
            self._queued = {f for f in self._queued if not f.done()} | {future}

    def _guarded(self, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception:  # noqa: BLE001 - a pool thread's exception would vanish unlogged
            log.exception("slack delivery failed")

    def _link(self, settings: SlackSettings, flow_id: str) -> str | None:
        if settings.review_url:
            return f"{settings.review_url}/flows/{urllib.parse.quote(flow_id, safe='')}"
        return self.link(flow_id)

    def _post(self, settings: SlackSettings, hold: dict[str, Any]) -> None:
        text, blocks = slack_message(hold, self._link(settings, hold["flow_id"]))
        answer = self._api(settings, "chat.postMessage", {
            "channel": settings.channel, "text": text, "blocks": blocks,
            "unfurl_links": False, "unfurl_media": False})
        if answer is None or not answer.get("ts"):
            return
        where = (str(answer.get("channel") or settings.channel), str(answer["ts"]))
        with self._lock:
            self.messages[hold["flow_id"]] = where
            while len(self.messages) > MESSAGES_KEPT:
                self.messages.popitem(last=False)
        now = self.remember(hold["flow_id"], *where)
        if now is not None and _state(now) != _state(hold):
            self._update(settings, now)  # decided (or voted on) while the post was on its way

    def _update(self, settings: SlackSettings, hold: dict[str, Any]) -> None:
        ref = hold.get("slack_message")
        with self._lock:
            where = (ref["channel"], ref["ts"]) if ref else self.messages.get(hold["flow_id"])
        if where is None:
            return  # never posted (Slack configured since, or the post failed): nothing to update
        text, blocks = slack_message(hold, self._link(settings, hold["flow_id"]))
        self._api(settings, "chat.update", {"channel": where[0], "ts": where[1], "text": text, "blocks": blocks})

    def _api(self, settings: SlackSettings, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """One Web API call (two attempts on a network error); the answer, or None (logged)."""
        url = f"{settings.api_url}/{method}"
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "portcullis-notify",
                   "Authorization": f"Bearer {settings.bot_token.value}"}
        problem = "not sent"
        for attempt in (1, 2):
            try:
                answer = _post_json(url, body, headers)
            except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
                problem = str(getattr(exc, "reason", exc))
                if attempt == 1:
                    time.sleep(BACKOFF_S)
                continue
            if answer.get("ok"):
                return answer
            problem = f"Slack answered {answer.get('error', 'not ok')}"
            break
        log.error("slack %s for flow %s failed: %s", method, body.get("ts") or "", problem)
        return None

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> bool:
        """Open a modal for the reviewer who clicked (``views.open``, now: a trigger id
        lives three seconds). Called on the UI's request thread; False when it failed."""
        settings = self.settings()
        if settings is None:
            return False
        return self._api(settings, "views.open", {"trigger_id": trigger_id, "view": view}) is not None

    def response_url_allowed(self, url: str) -> bool:
        """Only Slack's own hosts (or the configured API's) get ephemeral answers: the
        URL comes from a signed callback, but the gateway must never be made to post elsewhere."""
        settings = self.settings()
        parts = urlsplit(url)
        if settings is None or not parts.netloc:
            return False
        api = urlsplit(settings.api_url)
        return ((parts.scheme, parts.netloc) == (api.scheme, api.netloc)
                or (parts.scheme == "https" and parts.hostname in SLACK_RESPONSE_HOSTS))

    def tell(self, response_url: str | None, text: str) -> None:
        """An ephemeral answer to the reviewer who clicked (only they see it)."""
        pool = self.pool
        if not response_url or pool is None or not self.response_url_allowed(response_url):
            return
        body = {"response_type": "ephemeral", "replace_original": False, "text": slack_escape(text)}
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "portcullis-notify"}
        pool.submit(self._guarded, _post_json, response_url, body, headers)


def _state(hold: dict[str, Any]) -> tuple[Any, ...]:
    """What a hold's message shows that can change."""
    return hold["status"], len(hold.get("approvals") or []), hold.get("escalated")


def _post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    # No proxy: Slack must not be reached back through the gateway itself.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=TIMEOUT_S) as response:
        raw = response.read()
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        answer = {"ok": raw.strip() == b"ok"}  # response_url answers a bare "ok"
    return answer if isinstance(answer, dict) else {"ok": False}


def payload(hook: Webhook, kind: str, hold: dict[str, Any], link: str | None) -> dict[str, Any]:
    if hook.format == "slack":
        return {"text": message(kind, hold, link)}
    fields = ("flow_id", "identity", "rule", "reason", "justification", "method", "url",
              "approvers", "escalate_to", "decided_by", "comment", "deadline", "summary_line")
    body = {"event": kind, "at": time.time(), "review_url": link, **{f: hold.get(f) for f in fields}}
    if body.get("url"):
        body["url"] = redacted_url(body["url"])  # a webhook leaves the gateway too
    return body


class NotifyAddon:
    name = "portcullis_notify"

    def __init__(self, states: FlowStates, holds: HoldDesk, policy: Any, ui: Any = None) -> None:
        self.bus = states.bus
        self.holds = holds
        #: The policy addon: ``.policy`` is the policy in force now (its ``notify`` setting).
        self.policy_source = policy
        #: The review UI addon: ``.url`` is its base URL, or None when it is off.
        self.ui = ui
        self.slack = SlackPoster(self.slack_settings, self.review_link, self.remember_message)
        holds.slack = self.slack  # the review UI's Slack endpoint verifies and answers with it
        self.pool: ThreadPoolExecutor | None = None
        self._backlog = 0
        self._lock = threading.Lock()

    def running(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="portcullis-notify")
        self.slack.start()
        self.bus.subscribe(self.on_event)

    def done(self) -> None:
        self.bus.unsubscribe(self.on_event)
        self.slack.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def webhooks(self) -> list[Webhook]:
        policy = getattr(self.policy_source, "policy", None)
        return list(policy.settings.get("notify", [])) if policy is not None else []

    def slack_settings(self) -> SlackSettings | None:
        policy = getattr(self.policy_source, "policy", None)
        return policy.settings.get("slack") if policy is not None else None

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
        if self.pool is None or (event.kind not in NOTIFY_EVENTS and event.kind not in SLACK_EVENTS):
            return
        if event.detail.get("decided_elsewhere"):
            self._slack_catch_up(event)  # --state: the deciding gateway has notified already
            return
        hooks = [h for h in self.webhooks() if event.kind in h.events]
        slack = event.kind in SLACK_EVENTS and self.slack_settings() is not None
        if not hooks and not slack:
            return
        summary = self.holds.find(event.flow_id)
        if summary is None:
            return
        if slack:
            self.slack.on_hold(event.kind, {**summary, "slack_message": self.holds.slack_message(event.flow_id)})
        link = self.review_link(event.flow_id)
        for hook in hooks:
            with self._lock:
                if self._backlog >= MAX_BACKLOG:
                    log.error("notification backlog full; dropping %s for %s", event.kind, hook.url)
                    continue
                self._backlog += 1
            self.pool.submit(self._deliver, hook, payload(hook, event.kind, summary, link))

    def remember_message(self, flow_id: str, channel: str, ts: str) -> dict[str, Any] | None:
        """(The Slack thread.) Keep a posted message on its hold's record."""
        try:
            summary = self.holds.note_slack_message(flow_id, channel, ts)
        except DecisionError as exc:  # the gateway is stopping: this message is not updated
            log.warning("could not keep the Slack message of %s: %s", flow_id, exc.message)
            return None
        return {**summary, "slack_message": {"channel": channel, "ts": ts}} if summary is not None else None

    def _slack_catch_up(self, event: Event) -> None:
        """Another gateway decided a hold whose message this one posted. It rewrote the
        message if the record it decided on knew it; if not (it decided before this
        gateway's note of the message was committed), this gateway does."""
        if (event.kind not in SLACK_EVENTS or self.slack_settings() is None
                or not self.slack.posted_here(event.flow_id) or self.holds.slack_message(event.flow_id)):
            return
        summary = self.holds.find(event.flow_id)
        if summary is not None:
            self.slack.on_hold(event.kind, summary)

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
