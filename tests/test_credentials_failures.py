"""Credential injection in process, where it must fail closed: bad `credentials:` blocks
are refused naming the field, a match that cannot be evaluated refuses the request, a
reload that would print secrets keeps the previous credentials, and a response whose
echoes cannot be checked is never passed on."""

from __future__ import annotations

import logging
import textwrap

import pytest
from mitmproxy import exceptions
from mitmproxy.addons import dumper
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.core.rulefile import RuleFileError
from addons.credentials import addon as credentials_module
from addons.credentials.addon import CredentialsAddon, _may_stream
from addons.policy.engine import compile_policy

SECRET = "sk_live_cred_failures_0042"


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PC_CRED_FAILURES_KEY", SECRET)
    monkeypatch.setenv("PC_CRED_FAILURES_CRLF", "good\r\nX-Evil: 1")


def policy(credentials: str):
    return compile_policy("version: 1\n" + textwrap.dedent(credentials), "test.yaml")


@pytest.mark.parametrize(("block", "message"), [
    ("credentials: {a: 1}", "credentials must be a list"),
    ("credentials:\n  - {name: '', match: {}, set_header: {X-K: v}}", "name must be a non-empty string"),
    ("credentials:\n  - {name: stripe, set_header: {X-K: v}}", "credential rule 'stripe': needs a match block"),
    ("credentials:\n  - {match: {}}", "credentials[0]: needs set_header and/or query"),
    ("credentials:\n  - {match: {}, set_header: {X-K: v}, plain_http: 'yes'}", "plain_http must be true or false"),
    ("credentials:\n  - {match: {}, set_header: {}}", "expected a mapping of name -> value"),
    ("credentials:\n  - {match: {}, query: [a, b]}", "expected a mapping of name -> value"),
    ("credentials:\n  - {match: {}, set_header: {'Bad Header': v}}", "'Bad Header' is not a valid header name"),
])
def test_bad_credentials_blocks_are_refused(block: str, message: str) -> None:
    with pytest.raises(RuleFileError) as err:
        policy(block)
    assert message in str(err.value)
    assert str(err.value).startswith("test.yaml:")


def test_a_secret_with_a_line_break_is_refused_without_quoting_it() -> None:
    with pytest.raises(RuleFileError) as err:
        policy('credentials:\n  - {match: {}, set_header: {X-K: "${env:PC_CRED_FAILURES_CRLF}"}}')
    text = str(err.value)
    assert "the value from env:PC_CRED_FAILURES_CRLF contains a line break" in text
    assert "X-Evil" not in text and "good" not in text


HEADER_RULE = 'credentials:\n  - {name: k, match: {host: api.example}, set_header: {X-Api-Key: "${env:PC_CRED_FAILURES_KEY}"}, plain_http: true}'


def forwarded_flow(states: FlowStates, **kwargs):
    flow = tflow.tflow(**kwargs)
    flow.request.url = "http://api.example/v1/thing"
    states.of(flow).decision = "allowed"
    return flow


def test_a_match_that_cannot_be_evaluated_refuses_the_request() -> None:
    states = FlowStates()
    addon = CredentialsAddon(states)
    addon.policy_loaded(policy(
        'credentials:\n  - {match: {json: {"$.a": {exists: true}}}, '
        'set_header: {X-Api-Key: "${env:PC_CRED_FAILURES_KEY}"}, plain_http: true}'))
    flow = forwarded_flow(states)
    flow.request.headers["Content-Type"] = "application/octet-stream"  # no fields to read
    flow.request.content = b"a=1"
    addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"credential_error" in flow.response.content
    assert "X-Api-Key" not in flow.request.headers
    assert states.of(flow).secrets == set()


def test_mitmproxys_flow_printer_with_header_credentials_is_refused() -> None:
    addon = CredentialsAddon(FlowStates())
    with taddons.context(addon, dumper.Dumper()) as tctx:
        tctx.configure(addon, flow_detail=1)
        addon.policy_loaded(policy(HEADER_RULE))  # flow_detail=1 does not print headers
        with pytest.raises(exceptions.OptionsError, match="flow_detail=2 prints request headers"):
            tctx.configure(addon, flow_detail=2)


def test_a_reload_that_would_print_secrets_keeps_the_previous_credentials(caplog: pytest.LogCaptureFixture) -> None:
    addon = CredentialsAddon(FlowStates())
    query_rule = ('credentials:\n  - {name: q, match: {}, query: {key: "${env:PC_CRED_FAILURES_KEY}"}, '
                  'plain_http: true}')
    with taddons.context(addon, dumper.Dumper()) as tctx:
        tctx.configure(addon, flow_detail=1)
        addon.policy_loaded(policy(HEADER_RULE))  # headers are not printed at flow_detail=1
        addon.running()
        with caplog.at_level(logging.ERROR, "portcullis.credentials"):
            addon.policy_loaded(policy(query_rule))  # query strings are
        assert "the reloaded credentials are not used" in caplog.text
        assert "flow_detail=1 prints URLs" in caplog.text
        assert [c.label for c in addon.credentials] == ["credential rule 'k'"]


def test_scrubbing_that_fails_unexpectedly_refuses_the_response(monkeypatch: pytest.MonkeyPatch) -> None:
    states = FlowStates()
    addon = CredentialsAddon(states)
    flow = forwarded_flow(states, resp=True)
    states.of(flow).secrets.add(SECRET)
    flow.response.content = f"echo {SECRET}".encode()

    def broken(*_args: object) -> int:
        raise RuntimeError("scrubber bug")

    monkeypatch.setattr(credentials_module, "mask_response", broken)
    addon.response(flow)
    assert flow.response.status_code == 502
    assert b"response_not_scannable" in flow.response.content
    assert SECRET.encode() not in flow.response.content
    assert states.of(flow).error == "response_not_scannable"


def test_a_streamed_body_in_an_unscannable_charset_is_refused() -> None:
    states = FlowStates()
    addon = CredentialsAddon(states)
    flow = forwarded_flow(states, resp=True)
    states.of(flow).secrets.add(SECRET)
    flow.response.headers["Content-Type"] = "text/plain; charset=shift_jis"
    flow.response.stream = True
    addon.responseheaders(flow)
    assert flow.response.status_code == 502
    assert "charset 'shift_jis'" in states.of(flow).reason
    # The upstream's bytes are dropped; only our answer goes out at the end.
    assert flow.response.stream(SECRET.encode()) == []
    assert b"response_not_scannable" in flow.response.stream(b"")


def test_whether_mitmproxy_will_stream_a_body() -> None:
    response = tflow.tresp()
    response.stream = False
    response.headers["content-length"] = "2000"
    assert _may_stream(response) is False  # no master: no options, nothing streams
    addon = CredentialsAddon(FlowStates())
    with taddons.context(addon) as tctx:
        # Declared by mitmproxy's proxyserver addon, which this context does not load.
        tctx.options.add_option("stream_large_bodies", str | None, None, "as in mitmproxy")
        tctx.options.stream_large_bodies = "1k"
        assert _may_stream(response) is True
        response.headers["content-length"] = "10"
        assert _may_stream(response) is False
        response.headers["content-length"] = "many"
        assert _may_stream(response) is True  # an unknown length may switch half-way
        del response.headers["content-length"]
        assert _may_stream(response) is True
