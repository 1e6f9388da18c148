"""The upstreams addon in process: bad `upstreams:` entries and --resolve values are
refused naming the problem; a connection that did not go to its pinned address is cut."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow
from mitmproxy.tls import TlsData

from addons.core.rulefile import RuleFileError
from addons.policy.engine import compile_policy
from addons.upstreams.addon import UpstreamsAddon, abort_transport


def policy(body: str, base_dir: Path | None = None):
    return compile_policy("version: 1\n" + textwrap.dedent(body), "test.yaml", base_dir=base_dir)


@pytest.mark.parametrize(("block", "message"), [
    ("upstreams: {host: a}", "upstreams must be a list"),
    ("upstreams:\n  - {host: ''}", "host must be a non-empty host name or glob"),
    ("upstreams:\n  - {verify: false}", "host must be a non-empty host name or glob"),
    ("upstreams:\n  - {host: a.test, verify: 'no'}", "verify must be true or false"),
    ("upstreams:\n  - {host: a.test, ca_bundle: 5}", "ca_bundle must be a file path"),
    ("upstreams:\n  - {host: a.test, address: not-an-ip}", "address must be an IP address, got 'not-an-ip'"),
    ("upstreams:\n  - {host: '*.a.test', address: 10.0.0.1}", "address needs a literal host, not a glob"),
])
def test_bad_upstreams_entries_are_refused(block: str, message: str) -> None:
    with pytest.raises(RuleFileError) as err:
        policy(block)
    assert message in str(err.value)
    assert str(err.value).startswith("test.yaml:")


def test_a_missing_ca_bundle_is_refused_with_its_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError) as err:
        policy("upstreams:\n  - {host: a.test, ca_bundle: certs/ca.pem}", base_dir=tmp_path)
    assert f"CA bundle {tmp_path / 'certs' / 'ca.pem'} does not exist" in str(err.value)


@pytest.mark.parametrize(("entry", "message"), [
    ("api.test", "expected HOST=IP, got 'api.test'"),
    ("=10.0.0.1", "expected HOST=IP, got '=10.0.0.1'"),
    ("api.test=", "expected HOST=IP"),
    ("api.test=10.0.0.300", "'10.0.0.300' in 'api.test=10.0.0.300' is not an IP address"),
])
def test_bad_resolve_values_are_options_errors(entry: str, message: str) -> None:
    addon = UpstreamsAddon()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as err:
            tctx.configure(addon, portcullis_resolve=[entry])
        assert str(err.value).startswith("portcullis_resolve: ")
        assert message in str(err.value)
        tctx.configure(addon, portcullis_resolve=["API.Test=10.0.0.1"])
        assert addon.pinned_address("api.test") == "10.0.0.1"


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


def hook_data(peer: str) -> server_hooks.ServerConnectionHookData:
    server = tflow.tserver_conn()
    server.address = ("api.test", 443)
    server.peername = (peer, 443)
    return server_hooks.ServerConnectionHookData(server=server, client=tflow.tclient_conn())


def test_a_connection_that_missed_its_pin_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    addon = UpstreamsAddon()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_resolve=["api.test=10.0.0.1"])
        data = hook_data("10.9.9.9")
        transport = FakeTransport()
        proxyserver = SimpleNamespace(name="proxyserver", connections={
            data.client.id: SimpleNamespace(transports={data.server: SimpleNamespace(writer=SimpleNamespace(
                transport=transport))})})
        tctx.master.addons.add(proxyserver)
        with caplog.at_level(logging.ERROR, "portcullis.upstreams"):
            addon.server_connected(data)
        assert transport.aborted == 1
        assert "went to 10.9.9.9 instead of 10.0.0.1: cut" in caplog.text
        # The pinned address itself, or a connection without a peer yet: left alone.
        addon.server_connected(hook_data("10.0.0.1"))
        unconnected = hook_data("10.9.9.9")
        unconnected.server.peername = None
        addon.server_connected(unconnected)
        assert transport.aborted == 1


def test_without_the_proxyservers_internals_the_cut_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with taddons.context(), caplog.at_level(logging.ERROR, "portcullis.upstreams"):
        assert abort_transport("no-such-client", tflow.tserver_conn()) is False
    assert "mitmproxy internals changed" in caplog.text


def test_tls_for_a_host_with_rules_asks_tlsconfig_for_the_connection_first(tmp_path: Path) -> None:
    addon = UpstreamsAddon()
    addon.policy_loaded(policy("upstreams:\n  - {host: api.test, verify: false}"))
    asked: list[TlsData] = []
    # A tlsconfig that builds no connection (as for a protocol it leaves to others).
    tlsconfig = SimpleNamespace(name="tlsconfig", tls_start_server=asked.append)
    with taddons.context(addon) as tctx:
        tctx.master.addons.add(tlsconfig)
        server = tflow.tserver_conn()
        server.sni = "api.test"
        data = TlsData(conn=server, context=SimpleNamespace())
        addon.tls_start_server(data)
        assert asked == [data]
        assert data.ssl_conn is None
        other = tflow.tserver_conn()
        other.sni = "elsewhere.test"
        addon.tls_start_server(TlsData(conn=other, context=SimpleNamespace()))
        assert asked == [data]  # no rule for that host: nothing to do
