"""docs/deploy.md's several-hosts setup, as documented: Debian's HAProxy in TCP mode in front
of two gateways that share one PostgreSQL (--state).

The HAProxy configuration is the one in docs/deploy.md (its ```haproxy block), with the
documented host names replaced by this machine's ports, so the page cannot drift from what
is tested. Checked: both gateways take agents' connections; a request held on one gateway
is approved through the other's review UI (behind the same balancer); when a gateway is
killed, HAProxy sends every new connection to the survivor.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.settings import PROJECT_ROOT
from review_ui.reviewers import add_reviewer
from tests.support.gateway import GatewayProcess, free_port
from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401
from tests.support.upstream import UpstreamServer

RULES = """\
version: 1
default: allow
rules:
  - name: hold-refunds
    match: {method: POST, path: /refunds}
    action: hold
"""
DEPLOY = PROJECT_ROOT / "docs" / "deploy.md"


def documented_config() -> str:
    match = re.search(r"```haproxy\n(.*?)```", DEPLOY.read_text(), re.S)
    assert match, "docs/deploy.md has no ```haproxy block"
    return match.group(1)


def _established(pid: int, port: int) -> int:
    """How many established TCP connections process ``pid`` has on local port ``port``."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "01":  # ESTABLISHED
                inodes.add(f"socket:[{fields[9]}]")
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        except OSError:
            continue
    return count


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, confdir: Path, postgres_dsn: str) -> Iterator[dict[str, Any]]:
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if haproxy is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed (.ci/run installs Debian's haproxy)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    directory = tmp_path_factory.mktemp("haproxy")
    rules = directory / "rules.yaml"
    rules.write_text(RULES)
    reviewers = directory / "reviewers.yaml"
    _, token = add_reviewer(reviewers, "hal", [], "hal-password-123")
    # The UIs (and the balancer's UI frontend) share one port on three loopback addresses, so
    # a reviewer's `Host: localhost:PORT` is one each UI accepts (its DNS-rebinding check).
    ui = free_port()
    gateways = {}
    for name, address in (("a", "127.0.0.1"), ("b", "127.0.0.2")):
        gateways[name] = GatewayProcess(rules, confdir, ["--state", postgres_dsn, "--db", "",
                                                         "--ui", f"{address}:{ui}", "--reviewers", str(reviewers)])
        gateways[name].ui_address = f"{address}:{ui}"  # type: ignore[attr-defined]
    for gateway in gateways.values():
        gateway.start(timeout=60)
    proxy_port = free_port()
    config = (documented_config()
              .replace("*:8080", f"127.0.0.1:{proxy_port}").replace("*:8081", f"127.0.0.3:{ui}")
              .replace("gateway-a.internal:8080", f"127.0.0.1:{gateways['a'].port}")
              .replace("gateway-b.internal:8080", f"127.0.0.1:{gateways['b'].port}")
              .replace("gateway-a.internal:8081", gateways["a"].ui_address)  # type: ignore[attr-defined]
              .replace("gateway-b.internal:8081", gateways["b"].ui_address))  # type: ignore[attr-defined]
    assert ".internal" not in config, config
    path = directory / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    balancer = subprocess.Popen([haproxy, "-db", "-f", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(f"http://127.0.0.3:{ui}/login", timeout=2)
            break
        except requests.RequestException:
            assert balancer.poll() is None and time.monotonic() < deadline, balancer.stdout.read()
            time.sleep(0.05)
    yield {"proxy": f"http://127.0.0.1:{proxy_port}", "ui": f"http://127.0.0.3:{ui}", "ui_host": f"localhost:{ui}",
           "token": token,
           "gateways": gateways, "balancer": balancer}
    balancer.terminate()
    balancer.wait(10)
    for gateway in gateways.values():
        gateway.stop()


def _session(cluster: dict[str, Any]) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": cluster["proxy"]}
    return session


def test_both_gateways_take_agents_connections(cluster: dict[str, Any], upstream: UpstreamServer) -> None:
    sessions = [_session(cluster) for _ in range(8)]
    try:
        for session in sessions:  # keep-alive: each session holds one connection through HAProxy
            answer = session.get(upstream.url("/hello"), timeout=10)
            assert answer.status_code == 200 and answer.headers["X-Portcullis-Decision"] == "allowed"
        held = {name: _established(g.process.pid, g.port) for name, g in cluster["gateways"].items()}
        assert held["a"] > 0 and held["b"] > 0, held  # the documented balance spreads them
    finally:
        for session in sessions:
            session.close()


def test_a_hold_is_decided_through_the_balanced_review_ui(cluster: dict[str, Any], upstream: UpstreamServer) -> None:
    headers = {"Authorization": f"Bearer {cluster['token']}", "Host": cluster["ui_host"]}
    outcome: dict[str, Any] = {}

    def agent() -> None:
        outcome["answer"] = _session(cluster).post(upstream.url("/refunds"), json={"amount": 5}, timeout=30)

    waiter = threading.Thread(target=agent)
    waiter.start()
    deadline, pending = time.monotonic() + 15, []
    while not pending and time.monotonic() < deadline:
        pending = requests.get(f"{cluster['ui']}/api/pending", headers=headers, timeout=10).json()["pending"]
        time.sleep(0.05)
    assert len(pending) == 1
    decided = requests.post(f"{cluster['ui']}/api/flows/{pending[0]['flow_id']}/approve", headers=headers,
                            json={"comment": "via the balancer"}, timeout=10)
    assert decided.status_code == 200, decided.text
    waiter.join(30)
    assert outcome["answer"].status_code == 200
    assert outcome["answer"].headers["X-Portcullis-Decision"] == "approved"


def test_a_dead_gateway_is_taken_out_and_new_connections_reach_the_other(cluster: dict[str, Any],
                                                                         upstream: UpstreamServer) -> None:
    cluster["gateways"]["a"].process.send_signal(signal.SIGKILL)
    cluster["gateways"]["a"].process.wait(10)
    # retries + redispatch: a connection HAProxy cannot open to the dead one goes to the other.
    for _ in range(20):
        with _session(cluster) as session:
            assert session.get(upstream.url("/after"), timeout=10).status_code == 200
