"""The masking addon where masking cannot be done, in process (tflow/taddons, a real
compiled policy): bad --max-mask-body values, a pseudonym key that cannot be used, bodies
that cannot be decoded or were streamed, on_unmaskable: pass for requests, and echo
scrubbing after masking that fails: never an unmasked or unchecked body."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.credentials.addon import Unscrubbable
from addons.masking import addon as masking_module
from addons.masking.addon import NotMaskable
from addons.masking.pseudonyms import KEY_ENV, KEY_FILE
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy

RULES = """
version: 1
default: allow
rules:
  - name: strict
    match: {path: "/strict/**"}
    mask: ["$..ssn"]
  - name: hashed-header
    match: {path: "/hashed/**"}
    mask:
      - {header: x-user, with: hash}
  - name: lenient-request
    match: {path: "/lenient/**"}
    mask_request: ["$..ssn"]
    on_unmaskable: pass
"""
POLICY = compile_policy(RULES)
SECRET = "sk_live_masking_failures_0099"


def decided(states: FlowStates, path: str, resp: bool = True):
    flow = tflow.tflow(resp=resp)
    flow.request.path = path
    state = states.of(flow)
    state.verdict = POLICY.evaluate(RequestView(flow, "anonymous", frozenset(), state=state))
    state.decision = "allowed"
    return flow


def json_response(flow, document: object) -> None:
    flow.response.headers.clear()
    flow.response.headers["content-type"] = "application/json"
    flow.response.content = json.dumps(document).encode()


@pytest.mark.parametrize(("value", "message"), [
    ("lots", "portcullis_max_mask_body: "),
    ("0", "portcullis_max_mask_body must be a positive size such as 10m"),
])
def test_bad_max_mask_body_values_are_refused(value: str, message: str) -> None:
    addon = masking_module.MaskingAddon(FlowStates())
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, portcullis_max_mask_body=value)
    assert addon.max_body == masking_module.human.parse_size(masking_module.DEFAULT_MAX_BODY)


def test_an_unusable_pseudonym_key_is_reported_at_load_and_refuses_those_responses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    key = tmp_path / KEY_FILE
    key.write_text("00" * 32 + "\n")
    key.chmod(0o644)  # readable by others: refused
    states = FlowStates()
    addon = masking_module.MaskingAddon(states)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, confdir=str(tmp_path))
        assert addon.banner() == []  # no rules file yet
        with caplog.at_level(logging.ERROR, "portcullis.masking"):
            addon.policy_loaded(POLICY)
        assert "masks with 'hash' cannot work" in caplog.text
        assert "readable by other users" in caplog.text
        flow = decided(states, "/hashed/me")
        flow.response.headers["x-user"] = "alice@example.com"
        addon.responseheaders(flow)
    assert flow.response.status_code == 502
    body = json.loads(flow.response.content)
    assert body["error"] == "response_not_maskable"
    assert body["reason"] == "masking failed: MaskKeyError"
    assert b"alice" not in flow.response.content
    assert states.of(flow).error == "response_not_maskable"


def test_a_request_that_cannot_be_masked_passes_under_on_unmaskable_pass() -> None:
    states = FlowStates()
    addon = masking_module.MaskingAddon(states)
    events: list = []
    states.bus.subscribe(events.append)
    flow = decided(states, "/lenient/upload", resp=False)
    flow.request.headers["content-type"] = "application/json"
    flow.request.content = b"{not json, ssn: 123-45-6789"
    asyncio.run(addon.request(flow))
    assert flow.response is None  # forwarded, unmasked, as the rule allows
    assert flow.request.content == b"{not json, ssn: 123-45-6789"
    (unmaskable,) = [e for e in events if e.kind == "unmaskable"]
    assert unmaskable.detail["action"] == "pass" and unmaskable.detail["target"] == "request"


def test_a_response_that_cannot_be_decoded_is_refused() -> None:
    states = FlowStates()
    addon = masking_module.MaskingAddon(states)
    flow = decided(states, "/strict/record")
    flow.response.headers.clear()
    flow.response.headers["content-type"] = "application/json"
    flow.response.headers["content-encoding"] = "gzip"
    flow.response.raw_content = b'{"ssn": "123-45-6789"} (not gzip)'
    asyncio.run(addon.response(flow))
    assert flow.response.status_code == 502
    reason = json.loads(flow.response.content)["reason"]
    assert reason.startswith("cannot decode Content-Encoding")
    assert b"123-45-6789" not in flow.response.content


def test_a_body_that_was_streamed_cannot_be_masked() -> None:
    states = FlowStates()
    addon = masking_module.MaskingAddon(states)
    flow = decided(states, "/strict/record")
    flow.response.raw_content = None  # streamed: mitmproxy kept no body
    plan = masking_module._plan(states.of(flow), "mask")
    with pytest.raises(NotMaskable, match="the body was streamed and cannot be masked"):
        addon._mask_body(flow.response, plan, {}, keep_encoding=False)


def test_a_flow_without_a_verdict_has_nothing_to_mask() -> None:
    states = FlowStates()
    flow = tflow.tflow(resp=True)
    assert masking_module._plan(states.of(flow), "mask") == []
    assert masking_module._plan(states.of(decided(states, "/strict/x")), "mask") != []


@pytest.mark.parametrize("failure", [Unscrubbable("cannot scrub this body"), RuntimeError("scrubber bug")])
def test_echo_scrubbing_after_masking_that_fails_refuses_the_response(
        failure: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> int:
        raise failure

    monkeypatch.setattr(masking_module, "mask_response", broken)
    states = FlowStates()
    addon = masking_module.MaskingAddon(states)
    flow = decided(states, "/strict/record")
    states.of(flow).secrets.add(SECRET)
    json_response(flow, {"ssn": "123-45-6789", "echo": SECRET})
    asyncio.run(addon.response(flow))
    assert flow.response.status_code == 502
    assert json.loads(flow.response.content)["error"] == "response_not_scannable"
    assert SECRET.encode() not in flow.response.content
    assert b"123-45-6789" not in flow.response.content


def test_a_masked_response_with_an_echoed_secret_is_scrubbed_after_masking() -> None:
    # The path the failures above leave: the re-serialised body is scrubbed again.
    states = FlowStates()
    addon = masking_module.MaskingAddon(states)
    flow = decided(states, "/strict/record")
    states.of(flow).secrets.add(SECRET)
    json_response(flow, {"ssn": "123-45-6789", "echo": SECRET})
    asyncio.run(addon.response(flow))
    assert flow.response.status_code == 200
    document = json.loads(flow.response.content)
    assert document["ssn"] != "123-45-6789"
    assert SECRET not in document["echo"]
