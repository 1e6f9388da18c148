"""Decisions from Slack: the callback of the Approve/Reject buttons on each hold's message.

    POST /slack/interactions      the Slack app's Interactivity Request URL

The rules file's ``slack:`` settings make the gateway post each hold to a channel
(addons.holds.notify). A click arrives here; it is decided only if Slack signed it
(review_ui.slack.signing: v0 HMAC over timestamp and body, five-minute window, each
signed request taken once) and the clicking Slack member is a reviewer
(``slack_user`` in reviewers.yaml). The decision goes through the holds desk like any
other, so the same rules hold: the rule's groups, no self-approval, N distinct
approvals, nothing after expiry. Approve decides at once (after Slack's confirm
dialog); Reject opens a modal that asks for the comment the agent will read, and the
modal's submission rejects. A refused click gets an ephemeral answer (only the clicker
sees it), a refused submission its error in the modal; the message itself is rewritten
with each change by the notifier.

Slack must reach this URL: behind a reverse proxy, forward it with the UI's own
``Host`` (the UI refuses foreign host names).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from flask import Blueprint, current_app, jsonify, request

from addons.holds.book import Actor, DecisionError
from addons.holds.notify import (
    APPROVE_ACTION,
    COMMENT_BLOCK,
    COMMENT_INPUT,
    REJECT_ACTION,
    REJECT_VIEW,
    reject_view,
)
from review_ui.errors import api_error
from review_ui.holds.api import COMMENT_MAX
from review_ui.services import services
from review_ui.slack.signing import SeenSignatures, refusal

bp = Blueprint("slack", __name__, url_prefix="/slack")
log = logging.getLogger("portcullis.review_ui")

NOT_LINKED = ("Your Slack account is not linked to a Portcullis reviewer (slack_user in reviewers.yaml); "
              "nothing was decided.")


def _seen() -> SeenSignatures:
    return current_app.extensions.setdefault("portcullis_slack_seen", SeenSignatures())


def _payload(body: bytes) -> dict[str, Any] | None:
    try:
        values = parse_qs(body.decode("utf-8"), strict_parsing=True).get("payload")
        payload = json.loads(values[0]) if values and len(values) == 1 else None
    except (UnicodeDecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


@bp.post("/interactions")
def interactions() -> Any:
    slack = services().holds.slack
    secret = slack.signing_secret() if slack is not None else None
    if not secret:
        return api_error(404, "slack_not_configured", "this gateway has no slack: settings in its rules")
    body = request.get_data(cache=True)
    sent = request.headers.get("X-Slack-Signature")
    now = time.time()
    why = refusal(secret, request.headers.get("X-Slack-Request-Timestamp"), sent, body, now)
    if why is not None:
        log.warning("refused a Slack callback from %s: %s", request.remote_addr, why)
        return api_error(401, "bad_slack_signature", why)
    if not _seen().first(sent or "", now):
        log.warning("refused a replayed Slack callback from %s", request.remote_addr)
        return api_error(401, "slack_replay", "this signed request was already received")
    payload = _payload(body)
    if payload is None:
        return api_error(400, "bad_request", "expected a form with one JSON payload")
    user = payload.get("user")
    reviewer = services().reviewers.by_slack_user(user.get("id")) if isinstance(user, dict) \
        and isinstance(user.get("id"), str) else None
    if payload.get("type") == "view_submission":
        return _submitted(payload, reviewer)
    if payload.get("type") != "block_actions":
        return jsonify({"ok": True, "ignored": payload.get("type")})
    actions = payload.get("actions") or [{}]
    action = actions[0] if isinstance(actions[0], dict) else {}
    action_id, flow_id = action.get("action_id"), action.get("value")
    if action_id not in (APPROVE_ACTION, REJECT_ACTION) or not isinstance(flow_id, str):
        return jsonify({"ok": True, "ignored": action_id})
    response_url = payload.get("response_url") if isinstance(payload.get("response_url"), str) else None
    if reviewer is None:
        log.warning("a Slack member who is no reviewer clicked on %s; refused", flow_id)
        slack.tell(response_url, NOT_LINKED)
        return jsonify({"ok": False, "error": "unknown_slack_user"})
    actor = Actor(reviewer.name, reviewer.groups)
    try:
        if action_id == APPROVE_ACTION:
            hold = services().holds.approve(flow_id, actor, "", via="slack")
            return jsonify({"ok": True, "status": hold["status"], "reviewer": reviewer.name})
        return _ask_for_a_comment(slack, payload, flow_id, actor, response_url)
    except DecisionError as exc:
        slack.tell(response_url, f"Not decided: {exc.message}")
        return jsonify({"ok": False, "error": exc.code})


def _ask_for_a_comment(slack: Any, payload: dict[str, Any], flow_id: str, actor: Actor,
                       response_url: str | None) -> Any:
    """Reject: first the modal that asks why (the agent reads it), if this reviewer may decide."""
    allowed, why = services().holds.may_decide(flow_id, actor)
    if not allowed:
        slack.tell(response_url, f"Not decided: {why}")
        return jsonify({"ok": False, "error": "may_not_decide"})
    trigger = payload.get("trigger_id")
    hold = services().holds.find(flow_id)
    if not isinstance(trigger, str) or hold is None or not slack.open_view(trigger, reject_view(hold)):
        slack.tell(response_url, "Could not ask for a comment; reject it in the review UI.")
        return jsonify({"ok": False, "error": "view_not_opened"})
    return jsonify({"ok": True, "status": "asking_for_a_comment", "reviewer": actor.name})


def _submitted(payload: dict[str, Any], reviewer: Any) -> Any:
    """The reject modal's submission: reject with its comment, or show why not in the modal."""
    view = payload.get("view") if isinstance(payload.get("view"), dict) else {}
    if view.get("callback_id") != REJECT_VIEW or not isinstance(view.get("private_metadata"), str):
        return jsonify({"ok": True, "ignored": view.get("callback_id")})
    if reviewer is None:
        return jsonify({"response_action": "errors", "errors": {COMMENT_BLOCK: NOT_LINKED}})
    try:
        comment = view["state"]["values"][COMMENT_BLOCK][COMMENT_INPUT]["value"] or ""
    except (KeyError, TypeError):
        comment = ""
    comment = comment if isinstance(comment, str) else ""
    try:
        services().holds.reject(view["private_metadata"], Actor(reviewer.name, reviewer.groups),
                                comment.strip()[:COMMENT_MAX], via="slack")
    except DecisionError as exc:  # comment_required too: the hold book's rule, as everywhere
        why = exc.message if exc.code == "comment_required" else f"Not decided: {exc.message}"
        return jsonify({"response_action": "errors", "errors": {COMMENT_BLOCK: why}})
    return jsonify({"response_action": "clear"})
