"""Every file watcher logs a failed reload with the file's name and keeps watching.

A watcher task that raised used to end silently, so every later edit (and identity
revocation) was ignored. These drive the real reload loops of the policy and identity
addons with a loader that blows up unexpectedly once, then check the next edit applies;
and one real gateway whose identities live in the rules file: after a rejected edit, a
revocation still takes effect.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import pytest
import requests

from addons.core.flowstate import FlowStates
from addons.identity import addon as identity_module
from addons.identity.addon import IdentityAddon
from addons.policy import addon as policy_module
from addons.policy.addon import PolicyAddon
from addons.policy.engine import load_policy
from tests.support.upstream import UpstreamServer

RULES = """\
version: 1
rules:
  - name: block-{name}
    match: {{path: /{name}}}
    action: block
"""


def _explode(*_args, **_kwargs):
    raise RuntimeError("loader bug")


async def _run_watch(addon, attempts_until: callable, timeout: float = 5.0) -> None:
    addon._watcher = asyncio.get_running_loop().create_task(addon._watch())
    try:
        deadline = time.monotonic() + timeout
        while not attempts_until():
            assert not addon._watcher.done(), "the watcher task ended"
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)
    finally:
        addon._watcher.cancel()


def test_policy_watcher_survives_an_unexpected_loader_failure(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(policy_module, "RELOAD_INTERVAL_S", 0.02)
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(name="a"))
    addon = PolicyAddon(FlowStates())
    addon.rules_path, addon._signature = path, policy_module._signature(path)
    addon.policy = load_policy(path)

    async def scenario() -> None:
        monkeypatch.setattr(policy_module, "load_policy", _explode)
        path.write_text(RULES.format(name="bb"))
        await _run_watch(addon, lambda: "loader bug" in caplog.text)
        assert addon.policy.rules[0].name == "block-a"  # the last good rules stay
        monkeypatch.setattr(policy_module, "load_policy", load_policy)
        path.write_text(RULES.format(name="ccc"))
        await _run_watch(addon, lambda: addon.policy.rules[0].name == "block-ccc")

    with caplog.at_level(logging.ERROR, logger="portcullis.policy"):
        asyncio.run(scenario())
    assert f"rules file {path} could not be loaded" in caplog.text


def test_a_failing_listener_does_not_stop_the_others_or_the_reload(tmp_path, caplog):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(name="a"))
    addon = PolicyAddon(FlowStates())
    addon.rules_path, addon._signature = path, policy_module._signature(path)
    addon._watcher = object()  # running: listeners' failures are logged, not raised
    told = []
    addon.listeners = [_explode, told.append]
    path.write_text(RULES.format(name="bb"))
    with caplog.at_level(logging.ERROR, logger="portcullis.policy"):
        assert addon.reload_if_changed()
    assert [p.rules[0].name for p in told] == ["block-bb"]
    assert "loader bug" in caplog.text and str(path) in caplog.text


def test_identities_watcher_survives_an_unexpected_loader_failure(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(identity_module, "RELOAD_INTERVAL_S", 0.02)
    path = tmp_path / "identities.yaml"
    token = hashlib.sha256(b"t").hexdigest()
    path.write_text(f"identities:\n  - {{name: a, token_sha256: {token}}}\n")
    addon = IdentityAddon(FlowStates())
    addon.file = path
    addon.from_file = identity_module.load_identities_file(path)
    addon._signature = identity_module._signature(path)
    addon._rebuild()
    real_loader = identity_module.load_identities_file

    async def scenario() -> None:
        monkeypatch.setattr(identity_module, "load_identities_file", _explode)
        path.write_text(f"identities:\n  - {{name: bb, token_sha256: {token}}}\n")
        await _run_watch(addon, lambda: "loader bug" in caplog.text)
        assert set(addon.authenticator.identities) == {"a"}
        monkeypatch.setattr(identity_module, "load_identities_file", real_loader)
        path.write_text("identities: []\n")  # revoke everyone
        await _run_watch(addon, lambda: not addon.authenticator.identities)

    with caplog.at_level(logging.ERROR, logger="portcullis.identity"):
        asyncio.run(scenario())
    assert f"identities file {path} could not be loaded" in caplog.text


AGENT_TOKEN = "watcher-agent-token-0123456789"
WITH_IDENTITY = f"""\
version: 1
default: allow
identities:
  - {{name: agent, token_sha256: {hashlib.sha256(AGENT_TOKEN.encode()).hexdigest()}}}
rules: []
"""


@pytest.fixture(scope="module")
def watched_gateway(module_gateway):
    """One gateway for both kinds of bad edit; each test starts from WITH_IDENTITY again."""
    return module_gateway(WITH_IDENTITY)


@pytest.fixture(scope="module", name="upstream")
def module_upstream():
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("bad_edit", [
    "version: 1\nrules: &r [*r]\n",
    "version: 1\nrules: [\n",
], ids=["recursive-alias", "syntax-error"])
def test_revocation_in_the_rules_file_applies_after_a_rejected_edit(watched_gateway, upstream, bad_edit):
    gateway = watched_gateway
    gateway.reload_rules(WITH_IDENTITY, count=0)  # "agent" is back, whatever the last test left
    proxy = f"http://agent:{AGENT_TOKEN}@127.0.0.1:{gateway.port}"
    with requests.Session() as agent:
        agent.trust_env = False
        agent.proxies = {"http": proxy, "https": proxy}
        assert agent.get(upstream.url("/x"), timeout=10).status_code == 200
        mark = len(gateway.lines)
        gateway.rules.write_text(bad_edit)
        gateway.wait_for_output_after(mark, "rules file edit rejected", timeout=5)
        assert agent.get(upstream.url("/x"), timeout=10).status_code == 200
        gateway.rules.write_text(WITH_IDENTITY.replace("name: agent", "name: other"))  # revoke "agent"
        deadline = time.monotonic() + 3
        while (code := agent.get(upstream.url("/x"), timeout=10).status_code) == 200:
            assert time.monotonic() < deadline, "the revocation never took effect"
            time.sleep(0.05)
        assert code == 407


def test_jwks_refresh_survives_an_unexpected_failure_and_keeps_its_keys(tmp_path, caplog):
    from addons.identity.jwks import JwksCache, JwksUnavailable
    from tests.support.jwtkeys import jwks, rsa_key

    path = tmp_path / "jwks.json"
    path.write_text(jwks(rsa_key("k1")))
    cache = JwksCache(str(path), path, ("RS256",), min_refresh=0, ttl=0)  # refresh on every lookup
    cache.keys = cache.parse(cache.fetch())
    cache.loaded_at = time.monotonic()

    def broken(_raw: bytes):
        raise TypeError("parser bug")

    cache.parse = broken
    with caplog.at_level(logging.WARNING, logger="portcullis.identity"):
        assert asyncio.run(cache.key_for("k1")) is not None  # the cached key still serves
    assert f"JWKS refresh from {path} failed" in caplog.text and "parser bug" in caplog.text
    cache.keys = {}
    with pytest.raises(JwksUnavailable, match="parser bug"):  # no keys at all: fail closed, cleanly
        asyncio.run(cache.key_for("k1"))
