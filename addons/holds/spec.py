"""Rule fields for ``action: hold`` and the top-level hold settings.

Per rule::

    action: hold
    approvers: [finance-leads]   # reviewer groups allowed to decide (default: any reviewer)
    approvals_required: 2        # distinct reviewers needed (default 1); one rejection rejects
    timeout: 10m                 # then expired (default: top-level hold_timeout, 5m)
    escalate_after: 3m           # notify and admit the escalate_to groups after this long
    escalate_to: [security-oncall]
    grant: 15m                   # longest "approve and allow identical requests" a reviewer may give
    grant_unsafe_methods: true   # offer grants for POST/PATCH too (off by default: a grant
                                 # would let identical non-idempotent requests repeat)
    summary: "{$.amount} {$.currency} refund for {$.customer}"   # one line for reviewers

Top level::

    hold_timeout: 5m
    max_pending_holds_per_identity: 20   # more pending holds for one identity: 429
    max_held_body: 1MiB                  # a larger body cannot be held: 413
    notify:
      - url: https://hooks.slack.com/services/...
        format: slack            # or json (default)
        events: [held, escalated, approved, rejected, expired]   # default: all of these
    slack:                               # a Slack app: Approve/Reject buttons in a channel
      channel: C0123ABCD
      bot_token: ${env:SLACK_BOT_TOKEN}            # chat:write
      signing_secret: ${env:SLACK_SIGNING_SECRET}  # verifies the button callbacks

Durations are a number with a unit: ``90s``, ``10m``, ``1h`` (or a bare number of seconds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from addons.core.rulefile import Where
from addons.credentials.secretrefs import Resolved, resolve
from addons.holds.book import format_duration  # noqa: F401 - re-exported: durations live together
from addons.holds.summary import compile_template
from addons.policy.engine import LoadContext, Policy, Rule, rule_field, top_level_field

DEFAULT_HOLD_TIMEOUT_S = 300.0
#: One agent must not fill the reviewers' queue (and the gateway's memory) on its own.
DEFAULT_MAX_PENDING_HOLDS_PER_IDENTITY = 20
#: A held request's body stays in memory until it is decided (the flow keeps it; the
#: review page offers it for download), so a holdable body is bounded. 1 MiB is far
#: above what a reviewer can read, and 20 holds per identity cost at most ~20 MiB.
DEFAULT_MAX_HELD_BODY = 1024 * 1024
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|k|mb|mib|m)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}
NOTIFY_EVENTS = ("held", "escalated", "approved", "rejected", "expired", "abandoned")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """'90s' -> 90.0, '10m' -> 600.0, '1h' -> 3600.0, 30 -> 30.0. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        found = _DURATION.match(str(value))
        if not found:
            raise ValueError(f"expected a duration like 90s, 10m or 1h, got {value!r}")
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _duration(value: Any, where: Where) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        where.fail(str(exc))


def _groups(value: Any, where: Where) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(g, str) and g.strip() for g in value):
        where.fail("expected a non-empty list of reviewer group names")
    return frozenset(g.strip() for g in value)


def compile_groups(value: Any, where: Where, context: LoadContext) -> frozenset[str]:
    return _groups(value, where)


def compile_duration(value: Any, where: Where, context: LoadContext) -> float:
    return _duration(value, where)


rule_field("approvers", type="list of reviewer groups", example="[finance-leads]", see="review.md",
           summary="Reviewer groups that may decide this rule's holds (default: any reviewer).")(compile_groups)
rule_field("escalate_to", type="list of reviewer groups", example="[security-oncall]", see="review.md",
           summary="Groups that may also decide once `escalate_after` has passed.")(compile_groups)
rule_field("timeout", type="duration", example="10m", see="review.md",
           summary="How long a hold waits for a decision, then `approval_expired` (default `hold_timeout`).",
           )(compile_duration)
rule_field("escalate_after", type="duration", example="3m", see="review.md",
           summary="After this long, notify again and admit `escalate_to` as well.")(compile_duration)
rule_field("grant", type="duration", example="15m", see="review.md#grants",
           summary='Longest "approve and allow identical requests" a reviewer may give '
                   '(idempotent methods only unless `grant_unsafe_methods`).')(compile_duration)


@rule_field("grant_unsafe_methods", type="true | false", example="true", see="review.md#grants",
            summary="Offer `grant` also for non-idempotent methods (POST, PATCH); off by default.")
def compile_grant_unsafe_methods(value: Any, where: Where, context: LoadContext) -> bool:
    if not isinstance(value, bool):
        where.fail("grant_unsafe_methods must be true or false")
    return value


@rule_field("reject_comment", type="required | optional", example="optional", see="review.md",
            summary="Whether the review page asks for a comment to reject (default required: the agent reads it).")
def compile_reject_comment(value: Any, where: Where, context: LoadContext) -> bool:
    if value not in ("required", "optional"):
        where.fail("reject_comment must be required or optional")
    return value == "required"


@rule_field("summary", type="text with {$.path} placeholders", see="review.md",
            example='"{$.amount} {$.currency} refund for {$.customer}"',
            summary="One line over body fields shown for this rule's holds (queue, review page, notifications, recording).")
def compile_summary(value: Any, where: Where, context: LoadContext) -> str:
    try:
        return compile_template(value)
    except ValueError as exc:
        where.fail(str(exc))


top_level_field("hold_timeout", type="duration", example="5m", see="review.md",
                summary="Timeout of every hold whose rule sets no `timeout` (default 5m).")(compile_duration)


@top_level_field("max_pending_holds_per_identity", type="whole number 1-10000", example="20", see="review.md",
                 summary="Pending holds one identity may have; more are refused with 429.")
def compile_max_pending(value: Any, where: Where, context: LoadContext) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        where.fail("max_pending_holds_per_identity must be a whole number from 1 to 10000")
    return value


def parse_size(value: Any) -> int:
    """'64KiB' -> 65536, '1MiB' -> 1048576, 2048 -> 2048 (binary units). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512KiB or 1MiB")
    if isinstance(value, int):
        size = value
    else:
        found = _SIZE.match(str(value))
        if not found:
            raise ValueError(f"expected a size like 512KiB or 1MiB, got {value!r}")
        unit = found.group(2).lower() if found.group(2) else None
        size = int(found.group(1)) * _SIZE_UNITS[unit]
    if not 1 <= size <= 64 * 1024**2:
        raise ValueError("a held body size must be from 1 byte to 64MiB")
    return size


@top_level_field("max_held_body", type="size (bytes, KiB, MiB; at most 64MiB)", example="1MiB",
                 see="review.md", summary="Largest request body that can be held; a larger one is refused with 413.")
def compile_max_held_body(value: Any, where: Where, context: LoadContext) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        where.fail(str(exc))


@rule_field("approvals_required", type="whole number 1-10", example="2", see="review.md",
            summary="Distinct reviewers needed to approve (default 1); one rejection rejects.")
def compile_approvals_required(value: Any, where: Where, context: LoadContext) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
        where.fail("approvals_required must be a whole number from 1 to 10")
    return value


@dataclass(frozen=True)
class Webhook:
    url: str
    format: str  # "json" | "slack"
    events: frozenset[str]


@top_level_field("notify", type="list of {url, format, events}", see="review.md#notifications",
                 example="[{url: https://ops.example.com/portcullis, format: json, events: [held, escalated]}]",
                 summary="Webhooks (JSON or Slack) told when holds are created and decided.")
def compile_notify(value: Any, where: Where, context: LoadContext) -> list[Webhook]:
    if not isinstance(value, list):
        where.fail("notify must be a list of {url, format, events}")
    hooks = []
    for i, item in enumerate(value):
        at = where / i
        at.mapping(item, ("url", "format", "events"), "url (and optional format, events)")
        url = item.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            (at / "url").fail("url must be an http:// or https:// URL")
        fmt = item.get("format", "json")
        if fmt not in ("json", "slack"):
            (at / "format").fail("format must be json or slack")
        events = item.get("events", list(NOTIFY_EVENTS))
        if not isinstance(events, list) or not all(e in NOTIFY_EVENTS for e in events):
            (at / "events").fail(f"events must be a list of: {', '.join(NOTIFY_EVENTS)}")
        hooks.append(Webhook(url, fmt, frozenset(events)))
    return hooks


SLACK_KEYS = ("channel", "bot_token", "signing_secret", "api_url", "review_url")
DEFAULT_SLACK_API = "https://slack.com/api"
_SLACK_CHANNEL = re.compile(r"^[A-Z0-9][A-Z0-9_-]{1,79}$|^#[a-z0-9][a-z0-9._-]{0,79}$")


@dataclass(frozen=True)
class SlackSettings:
    """A Slack app that posts each hold with Approve/Reject buttons (addons.holds.notify)
    and whose button callbacks the review UI verifies (review_ui.slack). The token and
    secret come from ``${env:...}``/``${file:...}`` and never show in a repr."""

    channel: str
    bot_token: Resolved
    signing_secret: Resolved
    api_url: str = DEFAULT_SLACK_API
    #: The review UI as reviewers reach it (e.g. through a reverse proxy), for the
    #: message's link; None: the UI's own address.
    review_url: str | None = None


@top_level_field("slack", type="{channel, bot_token, signing_secret, api_url, review_url}", see="review.md#decisions-from-slack",
                 example="{channel: C0123ABCD, bot_token: '${env:SLACK_BOT_TOKEN}', "
                         "signing_secret: '${env:SLACK_SIGNING_SECRET}'}",
                 summary="A Slack app: each hold is posted with Approve/Reject buttons, decided by mapped reviewers.")
def compile_slack(value: Any, where: Where, context: LoadContext) -> SlackSettings:
    where.mapping(value, SLACK_KEYS, "channel, bot_token and signing_secret (and optional api_url, review_url)")
    for key in ("channel", "bot_token", "signing_secret"):
        if key not in value:
            where.fail(f"slack needs {key}")
    channel = value["channel"]
    if not isinstance(channel, str) or not _SLACK_CHANNEL.match(channel):
        (where / "channel").fail("channel must be a Slack channel id like C0123ABCD (or #name)")
    api_url = value.get("api_url", DEFAULT_SLACK_API)
    review_url = value.get("review_url")
    for key, url in (("api_url", api_url), ("review_url", review_url)):
        parts = urlsplit(url) if isinstance(url, str) else None
        if (url is not None or key == "api_url") and (
                parts is None or parts.scheme not in ("http", "https") or not parts.netloc):
            (where / key).fail(f"{key} must be an http:// or https:// URL")
    token = resolve(value["bot_token"], where / "bot_token", context, "slack")
    secret = resolve(value["signing_secret"], where / "signing_secret", context, "slack")
    for key, resolved in (("bot_token", token), ("signing_secret", secret)):
        if not resolved.secrets:
            (where / key).fail(f"{key} must come from ${{env:NAME}} or ${{file:/path}}, never the rules file itself")
    return SlackSettings(channel, token, secret, api_url.rstrip("/"), review_url.rstrip("/") if review_url else None)


@dataclass(frozen=True)
class HoldSpec:
    """Everything the approvals addon needs to know about one hold."""

    rule: str | None
    reason: str
    approvers: frozenset[str] | None  # None: any reviewer
    approvals_required: int
    timeout: float
    escalate_after: float | None
    escalate_to: frozenset[str]
    grant: float | None
    #: Grants for non-idempotent methods too (``grant_unsafe_methods: true``).
    grant_unsafe_methods: bool = False
    #: The rule's one-line ``summary`` template over body fields (addons.holds.summary).
    summary: str | None = None
    #: A rejection needs a comment, wherever it is made (HoldBook.reject; ``reject_comment: optional`` lifts it).
    reject_comment_required: bool = True


def hold_spec(rule: Rule | None, policy: Policy | None, reason: str) -> HoldSpec:
    """The hold settings for a verdict's rule (or the defaults, for `default: hold`)."""
    ext = dict(rule.extensions) if rule is not None else {}
    settings = policy.settings if policy is not None else {}
    return HoldSpec(
        rule=rule.name if rule is not None else None,
        reason=reason,
        approvers=ext.get("approvers"),
        approvals_required=ext.get("approvals_required", 1),
        timeout=ext.get("timeout", settings.get("hold_timeout", DEFAULT_HOLD_TIMEOUT_S)),
        escalate_after=ext.get("escalate_after"),
        escalate_to=ext.get("escalate_to", frozenset()),
        grant=ext.get("grant"),
        grant_unsafe_methods=ext.get("grant_unsafe_methods", False),
        summary=ext.get("summary"),
        reject_comment_required=ext.get("reject_comment", True),
    )
