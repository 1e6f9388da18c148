"""Slack-format webhooks cannot be steered by the agent: ``&``, ``<``, ``>`` are escaped.

Slack reads ``<!channel>`` as a channel ping and ``<https://evil.example|Approve here>``
as a link labelled "Approve here"; both used to reach Slack verbatim from the agent's
URL and justification. A real gateway holds a request sent over a raw socket (so the
URL keeps its literal ``<``, ``>`` and ``|``), and a real receiver on 127.0.0.1 gets the
webhook.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Iterator

import pytest

from addons.holds.notify import message, payload, slack_escape, slack_message
from tests.support.review import AGENT_TOKENS, ReviewRig
from tests.support.upstream import UpstreamServer

PING, LINK = "<!channel>", "<https://evil.example|Approve-here>"


def test_slack_escape_follows_slacks_rules():
    assert slack_escape("a & <b> <!here>") == "a &amp; &lt;b&gt; &lt;!here&gt;"
    assert slack_escape("line\nReview: https://evil.example") == "line Review: https://evil.example"


def test_every_agent_controlled_field_is_escaped():
    hold = {"method": "POST", "url": f"https://api.example/v1?x={LINK}", "identity": "agent<!here>",
            "reason": "R&D <refunds>", "justification": f"urgent {PING}", "decided_by": "alice",
            "escalate_to": ["<!subteam^S1>"]}
    for kind in ("held", "approved", "escalated"):
        text = message(kind, hold, "http://127.0.0.1:8081/flows/f1")
        assert "<" not in text and ">" not in text
        assert "&lt;!channel&gt;" in text and "&lt;https://evil.example|Approve-here&gt;" in text
        assert "R&amp;D" in text
    # The JSON format carries raw values: its consumers are programs, not Slack.
    assert payload(type("Hook", (), {"format": "json"})(), "held", hold, None)["url"] == hold["url"]


def test_secret_looking_query_values_never_leave_for_slack():
    from addons.holds.notify import redacted_url
    url = "https://api.example/v1/charges?api_key=sk_live_abcdefgh12345678&amount=5&token=xoxb-1234567890-abc"
    assert redacted_url(url) == "https://api.example/v1/charges?api_key=[redacted]&amount=5&token=[redacted]"
    hold = {"flow_id": "f1", "status": "pending", "method": "POST", "url": url, "identity": "a", "rule": "r",
            "reason": "why", "approvals_required": 1, "deadline": 1_900_000_000}
    text, blocks = slack_message(hold, None)
    assert "sk_live_" not in json.dumps(blocks) + text and "xoxb-" not in json.dumps(blocks) + text
    assert "api_key=[redacted]&amp;amount=5" in json.dumps(blocks)
    hook = type("Hook", (), {"format": "json"})()
    assert payload(hook, "held", hold, None)["url"] == redacted_url(url)


def test_the_block_kit_message_is_inert_too():
    hold = {"flow_id": "f1", "status": "pending", "method": "POST", "url": f"https://api.example/v1?x={LINK}",
            "identity": "agent<!here>", "rule": "r<@U1>", "reason": "R&D <refunds>",
            "justification": f"urgent {PING}", "body_summary": f"note={LINK}", "approvers": ["<!subteam^S1>"],
            "approvals": [{"reviewer": "bob<!here>"}], "approvals_required": 2, "deadline": 1_900_000_000}
    for status in ("pending", "approved", "rejected"):
        text, blocks = slack_message({**hold, "status": status, "decided_by": "x<!here>",
                                      "comment": PING}, "http://127.0.0.1:8081/flows/f1")
        mrkdwn = [t for t in _texts(blocks) if t["type"] == "mrkdwn"]
        assert mrkdwn and all(t["verbatim"] is True for t in mrkdwn)
        for t in _texts(blocks):  # only the gateway's own date token is markup
            body = re.sub(r"<!date\^1900000000\^\{time_secs\}\|[^<>]*>", "", t["text"])
            assert "<" not in body and ">" not in body, body
        assert "&lt;!channel&gt;" in json.dumps(blocks)
        assert "<" not in text.replace("\n", "") and ">" not in text
    _text, blocks = slack_message({**hold, "url": "https://x.example/" + "a" * 5000}, None)
    assert all(len(t["text"]) <= 3000 for t in _texts(blocks))


def _texts(node):
    if isinstance(node, dict):
        if node.get("type") in ("mrkdwn", "plain_text") and "text" in node:
            yield node
        for value in node.values():
            yield from _texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _texts(item)


@pytest.fixture(scope="module")
def receiver() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir, receiver: UpstreamServer) -> Iterator[ReviewRig]:
    notify = f"""
        notify:
          - url: {receiver.url("/slack")}
            format: slack
            events: [held]
    """
    rig = ReviewRig(tmp_path_factory.mktemp("slack"), confdir, extra_rules=notify)
    yield rig
    rig.stop()


def test_a_real_hold_sends_inert_slack_text(rig: ReviewRig, receiver: UpstreamServer):
    credentials = base64.b64encode(f"billing-agent:{AGENT_TOKENS['billing-agent']}".encode()).decode()
    target = rig.upstream.url(f"/v1/refunds?note={PING}{LINK}")
    body = b'{"amount": 250}'
    request = (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{rig.upstream.port}\r\n"
               f"Proxy-Authorization: Basic {credentials}\r\n"
               f"X-Portcullis-Justification: please {PING} click {LINK}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", rig.gateway.port), timeout=10) as agent:
        agent.sendall(request)  # held (wait mode): the socket stays open until the webhook is in
        hold = rig.wait_held("/v1/refunds?note=" + PING + LINK)
        texts = rig.wait_for(lambda: [r.json()["text"] for r in receiver.received
                                      if hold["flow_id"] in r.body.decode()], what="slack webhook")
        rig.reject("alice", hold["flow_id"])
    text = texts[0]
    assert hold["url"].endswith(PING + LINK)  # the agent's URL really carried the markup
    assert "<" not in text and ">" not in text, text
    assert text.count("&lt;!channel&gt;") == 2 and text.count("&lt;https://evil.example|Approve-here&gt;") == 2
