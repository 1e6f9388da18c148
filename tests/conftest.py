"""Shared fixtures: real upstream servers, real gateways, clients configured by HTTP_PROXY."""

from __future__ import annotations

import os
import ssl
import subprocess
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import addons.schema  # noqa: F401  (every package's rules keys, before any test compiles rules)
from gateway.agent_env import ensure_ca
from tests.support.certs import TestPki, make_pki
from tests.support.gateway import GatewayProcess, reap
from tests.support.upstream import UpstreamServer

pytest_plugins = ["tests.support.browser", "tests.support.postgres"]

# The tests start a few hundred interpreters (gateways, their recording processes, the
# CLI, mitmdump). Where the environment says PYTHONDONTWRITEBYTECODE, each of them compiled
# ~130 of our modules from source (0.15-0.2 s of CPU a gateway start): cache bytecode in
# build/ instead, outside the source tree the setting keeps clean.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(__file__).resolve().parent.parent / "build" / "pycache"))

#: The whole suite runs on this many pytest-xdist workers (pyproject's addopts say
#: ``-n auto --dist loadfile``: a module's tests, and so its shared gateway, stay on one
#: worker); a run of a few modules runs in this process, as before. PORTCULLIS_TEST_WORKERS
#: overrides (0: no workers). Four on two cores: much of a test's time is waiting (a
#: gateway starting, a timeout running out, a browser rendering), so with two workers the
#: cores were a third idle (2026-12-03: 2 workers 5:02 for the 3.11 line, 6.6 CPU-minutes;
#: 4 workers 3:56, the same CPU).
SUITE_WORKERS = 4
#: A selection of at least this many test modules counts as "the whole suite".
SUITE_MODULES = 20


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    if configured := os.environ.get("PORTCULLIS_TEST_WORKERS"):
        return int(configured)
    root = config.invocation_params.dir
    modules: set[Path] = set()
    for arg in config.args or ["tests"]:
        path = root / arg.split("::", 1)[0]
        modules |= set(path.rglob("test_*.py")) if path.is_dir() else {path}
    if len(modules) < SUITE_MODULES or (os.cpu_count() or 1) < 2:
        return 0
    return SUITE_WORKERS


#: Set PORTCULLIS_COUNT_PROCESSES=1 to print, per test module, how many subprocesses its
#: tests started and of which kind (a gateway start costs one to two seconds).
_COUNTING = os.environ.get("PORTCULLIS_COUNT_PROCESSES") == "1"
_started: Counter[tuple[str, str]] = Counter()
_current_module = ["(collection)"]


def _process_kind(args: object) -> str:
    words = [str(word) for word in (args if isinstance(args, (list, tuple)) else [args])]
    text = " ".join(words)
    if "-m gateway run" in text or "portcullis run" in text:
        return "gateway"
    if "mitmdump" in text:
        return "mitmdump"
    if "-m gateway" in text or "portcullis" in text:
        return "cli"
    return Path(words[0]).name if words else "?"


if _COUNTING:
    _original_init = subprocess.Popen.__init__

    def _counting_init(self: subprocess.Popen, args: object, *rest: object, **kwargs: object) -> None:
        _started[(_current_module[0], _process_kind(args))] += 1
        _original_init(self, args, *rest, **kwargs)  # type: ignore[arg-type]

    subprocess.Popen.__init__ = _counting_init  # type: ignore[method-assign]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(item: pytest.Item) -> None:
        _current_module[0] = item.nodeid.split("::", 1)[0]

    def pytest_testnodedown(node, error) -> None:  # type: ignore[no-untyped-def]
        """An xdist worker is done: add its counts to the controller's."""
        for key, count in node.workeroutput.get("portcullis_started", []):
            _started[tuple(key)] += count

    def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
        terminalreporter.section("subprocesses started per module")
        totals: Counter[str] = Counter()
        for (module, kind), count in sorted(_started.items()):
            terminalreporter.write_line(f"{count:5d} {kind:10s} {module}")
            totals[kind] += count
        for kind, count in totals.most_common():
            terminalreporter.write_line(f"{count:5d} {kind:10s} TOTAL")


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


def _gateway_factory(directory: Path, confdir: Path, started: list[GatewayProcess]) -> GatewayFactory:
    def start(rules: str, *extra_args: str, env: dict[str, str] | None = None) -> GatewayProcess:
        path = directory / f"rules{len(started) or ''}.yaml"
        path.write_text(textwrap.dedent(rules))
        gateway = GatewayProcess(path, confdir, list(extra_args), env).start()
        started.append(gateway)
        return gateway

    return start


@pytest.fixture
def start_gateway(tmp_path: Path, confdir: Path) -> Iterator[GatewayFactory]:
    """start_gateway(rules_yaml_text, *extra_args, env=None) -> a running GatewayProcess.

    The rules text is dedented and written to tmp_path/rules.yaml; the process is
    told to stop at teardown (stop_soon: its exit is awaited later). For a test that
    needs a process of its own: a changed command line, a crash, a restart.
    """
    started: list[GatewayProcess] = []
    yield _gateway_factory(tmp_path, confdir, started)
    for gateway in started:
        gateway.stop_soon()


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory, confdir: Path) -> Iterator[GatewayFactory]:
    """start_gateway for a whole test module: module_gateway(rules, *extra_args, env=None).

    Use it in a module-scoped fixture so the module's tests share one process; tests
    that need other rules call ``gateway.reload_rules(text)`` rather than start another.
    """
    started: list[GatewayProcess] = []
    yield _gateway_factory(tmp_path_factory.mktemp("module-gateway"), confdir, started)
    for gateway in started:
        gateway.stop_soon()


def pytest_sessionfinish(session: pytest.Session) -> None:
    reap()  # gateways told to stop_soon() exit before the session ends
    if _COUNTING and hasattr(session.config, "workeroutput"):  # an xdist worker: report to the controller
        session.config.workeroutput["portcullis_started"] = [[list(key), n] for key, n in _started.items()]


@pytest.fixture
def use_gateway(monkeypatch: pytest.MonkeyPatch) -> Callable[[GatewayProcess], None]:
    """Point this test process's HTTP clients at a gateway the way an agent would: env vars."""

    def use(gateway: GatewayProcess) -> None:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name, value in gateway.agent_env().items():
            monkeypatch.setenv(name, value)

    return use
