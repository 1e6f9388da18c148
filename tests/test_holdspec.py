"""Hold rule fields and top-level hold settings: parsing, defaults, precise errors."""

from __future__ import annotations

import re
import textwrap

import pytest

from addons.core.rulefile import RuleFileError
from addons.holds.spec import DEFAULT_HOLD_TIMEOUT_S, format_duration, hold_spec, parse_duration
from addons.policy.engine import compile_policy


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("10m", 600), ("1h", 3600), ("1.5m", 90), ("250ms", 0.25), (30, 30), ("2d", 172800),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5s", "0s", True, "m10"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips():
    for seconds in (45.0, 300.0, 900.0, 7200.0, 90.0):
        assert parse_duration(format_duration(seconds)) == seconds


def policy(body: str):
    return compile_policy(textwrap.dedent(body), "rules.yaml")


def test_full_hold_rule_compiles_to_a_spec():
    compiled = policy("""
        version: 1
        hold_timeout: 2m
        notify:
          - url: https://hooks.example.com/x
            format: slack
        rules:
          - name: refunds
            match: {path: /v1/refunds}
            action: hold
            reason: Refunds need a finance lead
            approvers: [finance-leads]
            approvals_required: 2
            timeout: 10m
            escalate_after: 3m
            escalate_to: [security-oncall]
            grant: 15m
            grant_unsafe_methods: true
          - name: plain
            match: {path: /v1/plain}
            action: hold
    """)
    refunds, plain = compiled.rules
    spec = hold_spec(refunds, compiled, "why")
    assert spec.approvers == frozenset({"finance-leads"})
    assert (spec.approvals_required, spec.timeout, spec.escalate_after, spec.grant) == (2, 600, 180, 900)
    assert spec.escalate_to == frozenset({"security-oncall"}) and spec.grant_unsafe_methods is True
    defaults = hold_spec(plain, compiled, "why")
    assert defaults.approvers is None and defaults.approvals_required == 1
    assert defaults.grant is None and defaults.grant_unsafe_methods is False
    assert defaults.timeout == 120  # top-level hold_timeout
    assert hold_spec(None, None, "default hold").timeout == DEFAULT_HOLD_TIMEOUT_S
    assert compiled.settings["notify"][0].format == "slack"


@pytest.mark.parametrize(("snippet", "where", "message"), [
    ("timeout: soon", "rules[0].timeout", "expected a duration"),
    ("approvals_required: 0", "rules[0].approvals_required", "from 1 to 10"),
    ("approvers: []", "rules[0].approvers", "non-empty list"),
    ("escalate_to: [1, 2]", "rules[0].escalate_to", "non-empty list"),
    ("grant: -1m", "rules[0].grant", "expected a duration"),
    ("grant_unsafe_methods: 'yes'", "rules[0].grant_unsafe_methods", "true or false"),
])
def test_bad_rule_fields_name_file_line_and_field(snippet, where, message):
    with pytest.raises(RuleFileError) as caught:
        policy(f"""
            version: 1
            rules:
              - name: r
                match: {{}}
                action: hold
                {snippet}
        """)
    text = str(caught.value)
    assert f"rules.yaml:7:5: {where}:" in text and message in text


@pytest.mark.parametrize(("snippet", "message"), [
    ("notify: [{url: ftp://x}]", "http:// or https://"),
    ("notify: [{url: 'https://x.example', format: teams}]", "json or slack"),
    ("notify: [{url: 'https://x.example', events: [deleted]}]", "events must be"),
    ("notify: [{url: 'https://x.example', secret: 1}]", "unknown key"),
    ("hold_timeout: forever", "expected a duration"),
])
def test_bad_top_level_settings(snippet, message):
    with pytest.raises(RuleFileError, match=message):
        policy(f"""
            version: 1
            {snippet}
        """)


def test_slack_settings_compile_with_secrets_from_the_environment(monkeypatch):
    monkeypatch.setenv("T_SLACK_TOKEN", "xoxb-1")
    monkeypatch.setenv("T_SLACK_SECRET", "s3cr3t")
    compiled = policy("""
        version: 1
        slack:
          channel: C0123ABCD
          bot_token: ${env:T_SLACK_TOKEN}
          signing_secret: ${env:T_SLACK_SECRET}
          review_url: https://portcullis.example.com/
    """)
    slack = compiled.settings["slack"]
    assert (slack.channel, slack.bot_token.value, slack.signing_secret.value) == ("C0123ABCD", "xoxb-1", "s3cr3t")
    assert (slack.api_url, slack.review_url) == ("https://slack.com/api", "https://portcullis.example.com")
    assert "xoxb-1" not in repr(slack) and "s3cr3t" not in repr(slack)

    from addons.holds.notify import SlackPoster
    poster = SlackPoster(lambda: slack, lambda flow_id: f"http://127.0.0.1:8081/flows/{flow_id}")
    assert poster._link(slack, "f/1") == "https://portcullis.example.com/flows/f%2F1"
    assert poster.response_url_allowed("https://hooks.slack.com/actions/T/1/x")
    assert not poster.response_url_allowed("https://evil.example/hooks") and not poster.response_url_allowed("x")


@pytest.mark.parametrize(("snippet", "message"), [
    ("slack: {bot_token: '${env:HOME}', signing_secret: '${env:HOME}'}", "slack needs channel"),
    ("slack: {channel: C1234, bot_token: xoxb-in-the-file, signing_secret: '${env:HOME}'}",
     "bot_token must come from ${env:NAME} or ${file:/path}"),
    ("slack: {channel: 'general chat', bot_token: '${env:HOME}', signing_secret: '${env:HOME}'}", "channel id"),
    ("slack: {channel: C1234, bot_token: '${env:HOME}', signing_secret: '${env:HOME}', api_url: ftp://x}",
     "api_url must be an http"),
    ("slack: {channel: C1234, bot_token: '${env:NO_SUCH_VAR_X}', signing_secret: '${env:HOME}'}",
     "NO_SUCH_VAR_X is not set"),
    ("slack: {channel: C1234, bot_token: '${env:HOME}', signing_secret: '${env:HOME}', team: T1}", "unknown key"),
])
def test_bad_slack_settings(snippet, message):
    with pytest.raises(RuleFileError, match=re.escape(message)):
        policy(f"""
            version: 1
            {snippet}
        """)
