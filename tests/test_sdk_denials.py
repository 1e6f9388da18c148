"""Denials the official openai and anthropic SDKs can read: their exception names the
rule and the reason (the provider error shape, addons.core.replies.ProviderShape).

Real SDKs (openai 3.57, anthropic 2.15, in their own virtualenv) through a real gateway to
local fake API servers; blocked requests never reach them. The shape chosen by host
(api.openai.com, api.anthropic.com, Azure) is checked in process.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mitmproxy.test import tflow

from addons.core import replies
from tests.support import sdk_venv
from tests.support.gateway import GatewayProcess

RULES = """
version: 1
default: allow
rules:
  - name: no-secret-models
    match: {path: /v1/chat/completions, json: {"$.model": gpt-secret}}
    action: block
    reason: "This model is not approved for agents"
    deny_as: provider
  - name: no-opus-for-agents
    match: {path: /v1/messages, json: {"$.model": claude-opus}}
    action: block
    reason: "Agents use the small model"
    deny_as: provider
"""

COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-ok",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "hi"}}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-small",
           "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
           "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}


class FakeLlm(BaseHTTPRequestHandler):
    """/v1/chat/completions (OpenAI) and /v1/messages (Anthropic); records each model."""

    seen: list[tuple[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        FakeLlm.seen.append((self.path, body.get("model")))
        answer = COMPLETION if self.path.startswith("/v1/chat") else MESSAGE
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def fake_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLlm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk-denials")
    (root / "rules.yaml").write_text(RULES)
    process = GatewayProcess(root / "rules.yaml", root / "conf").start()
    yield process
    process.stop_soon()  # nothing reads it after: its exit is awaited later (reap)


CLIENT = r'''
import json, sys
import anthropic, openai
base = sys.argv[1]
out = {}
def report(name, call):
    try:
        result = call()
        out[name] = {"ok": True, "result": str(result)[:200]}
    except Exception as e:
        out[name] = {"exception": type(e).__name__, "message": str(e),
                     "status": getattr(e, "status_code", None), "body": getattr(e, "body", None),
                     "code": getattr(e, "code", None)}
o = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
report("openai_blocked", lambda: o.chat.completions.create(model="gpt-secret", messages=[{"role": "user", "content": "x"}]))
report("openai_allowed", lambda: o.chat.completions.create(model="gpt-ok", messages=[{"role": "user", "content": "x"}]))
a = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
report("anthropic_blocked", lambda: a.messages.create(model="claude-opus", max_tokens=5, messages=[{"role": "user", "content": "x"}]))
report("anthropic_allowed", lambda: a.messages.create(model="claude-small", max_tokens=5, messages=[{"role": "user", "content": "x"}]))
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def outcomes(gateway, fake_api):
    FakeLlm.seen.clear()
    return sdk_venv.run_json("llm", CLIENT, fake_api, gateway=gateway, timeout=120)


def test_openai_sdk_exception_names_the_rule_and_the_reason(outcomes):
    blocked = outcomes["openai_blocked"]
    assert blocked["exception"] == "PermissionDeniedError", blocked
    assert blocked["status"] == 403
    assert "This model is not approved for agents" in blocked["message"]
    assert "no-secret-models" in blocked["message"]
    assert blocked["code"] == "blocked_by_policy"
    assert blocked["body"]["rule"] == "no-secret-models"
    assert blocked["body"]["reason"] == "This model is not approved for agents"
    assert blocked["body"]["flow_id"]
    assert outcomes["openai_allowed"]["ok"] is True


def test_anthropic_sdk_exception_names_the_rule_and_the_reason(outcomes):
    blocked = outcomes["anthropic_blocked"]
    assert blocked["exception"] == "PermissionDeniedError", blocked
    assert "Agents use the small model" in blocked["message"]
    assert "no-opus-for-agents" in blocked["message"]
    error = blocked["body"]["error"]  # the anthropic SDK keeps the whole body (openai: the inner object)
    assert (error["rule"], error["reason"], error["code"]) == (
        "no-opus-for-agents", "Agents use the small model", "blocked_by_policy")
    assert outcomes["anthropic_allowed"]["ok"] is True


def test_blocked_requests_never_reach_the_fake_servers(outcomes):
    assert sorted(FakeLlm.seen) == [("/v1/chat/completions", "gpt-ok"), ("/v1/messages", "claude-small")]


@pytest.mark.parametrize(("host", "provider"), [
    ("api.openai.com", "openai"), ("my-res.openai.azure.com", "openai"),
    ("api.anthropic.com", "anthropic"), ("API.Anthropic.com", "anthropic"),
    ("api.example.com", None), ("api.openai.com.evil.test", None), ("x.y.openai.azure.com", None),
])
def test_provider_hosts(host, provider):
    assert replies.provider_of(host) == provider


def test_known_llm_hosts_get_the_provider_shape_without_a_rule_option():
    flow = tflow.tflow()
    flow.request.host = "api.anthropic.com"
    replies.reply(flow, 403, "blocked_by_policy", "blocked", rule="r", reason="because")
    body = json.loads(flow.response.content)
    assert flow.response.status_code == 403
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert body["error"]["code"] == "blocked_by_policy"
    assert body["error"]["message"].startswith("because (Portcullis blocked_by_policy: rule r, flow ")
    assert (body["error"]["rule"], body["error"]["reason"], body["error"]["flow_id"]) == ("r", "because", flow.id)
    other = tflow.tflow()  # any other host: the gateway's JSON, as before
    replies.reply(other, 429, "too_many_pending_holds", "blocked", reason="wait")
    assert json.loads(other.response.content) == {"error": "too_many_pending_holds", "reason": "wait",
                                                 "flow_id": other.id}
