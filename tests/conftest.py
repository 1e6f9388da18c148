"""Shared fixtures: real upstream servers, real gateways, clients configured by HTTP_PROXY."""

from __future__ import annotations

import ssl
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.agent_env import ensure_ca
from tests.support.certs import TestPki, make_pki
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

pytest_plugins = ["tests.support.browser", "tests.support.postgres"]


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One gateway CA for the whole session (generating it costs about a second)."""
    path = tmp_path_factory.mktemp("confdir")
    ensure_ca(path)
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture
def tls_upstream(pki: TestPki) -> Iterator[UpstreamServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server = UpstreamServer(tls=context).start()
    yield server
    server.stop()


GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def start_gateway(tmp_path: Path, confdir: Path) -> Iterator[GatewayFactory]:
    """start_gateway(rules_yaml_text, *extra_args, env=None) -> a running GatewayProcess.

    The rules text is dedented and written to tmp_path/rules.yaml; the process is
    stopped at teardown.
    """
    started: list[GatewayProcess] = []

    def start(rules: str, *extra_args: str, env: dict[str, str] | None = None) -> GatewayProcess:
        path = tmp_path / f"rules{len(started) or ''}.yaml"
        path.write_text(textwrap.dedent(rules))
        gateway = GatewayProcess(path, confdir, list(extra_args), env).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def use_gateway(monkeypatch: pytest.MonkeyPatch) -> Callable[[GatewayProcess], None]:
    """Point this test process's HTTP clients at a gateway the way an agent would: env vars."""

    def use(gateway: GatewayProcess) -> None:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name, value in gateway.agent_env().items():
            monkeypatch.setenv(name, value)

    return use
