"""examples/netns: a network namespace whose only way out is the gateway (Linux, root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from gateway.settings import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "examples" / "netns" / "portcullis-netns"


def _netns_usable() -> str | None:
    """Why the example cannot run here, or None if it can."""
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "needs root (ip netns add, setns)"
    if shutil.which("ip") is None or shutil.which("curl") is None:
        return "needs iproute2 (ip) and curl"
    probe = f"pcprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


REASON = _netns_usable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture
def netns(tmp_path):
    name = f"pctest{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PORTCULLIS": f"{sys.executable} -m gateway", "PYTHON": sys.executable,
           "PORTCULLIS_NETNS_STATE": str(tmp_path / "state")}
    yield name, env
    subprocess.run([str(SCRIPT), "down", name], env=env, capture_output=True, timeout=30)
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_gateway_is_the_only_way_out(netns, start_gateway, upstream):
    name, env = netns
    gateway = start_gateway("""
        version: 1
        default: allow
    """)
    up = run("up", name, "--gateway", f"127.0.0.1:{gateway.port}", "--port", "3128", env=env)
    assert up.returncode == 0, up.stderr
    env = {**env, "PORTCULLIS_CONFDIR": str(gateway.confdir)}

    through = run("exec", name, "--", "curl", "-sS", "-D", "-", "-o", "/dev/null",
                  upstream.url("/through"), env=env)
    assert through.returncode == 0, through.stderr
    assert "x-portcullis-decision: allowed" in through.stdout.lower()
    assert [r.path for r in upstream.received] == ["/through"]

    # Ignoring the proxy variables gets nowhere: the upstream's 127.0.0.1 is not this
    # namespace's loopback, and there is no route to any other address.
    script = (f"curl -sS --noproxy '*' --max-time 5 {upstream.url('/direct')}; echo direct=$?; "
              "curl -sS --noproxy '*' --max-time 5 http://192.0.2.1/; echo outside=$?")
    bypass = run("exec", name, "--", "sh", "-c", script, env=env)
    assert "direct=7" in bypass.stdout  # curl: couldn't connect
    assert "outside=7" in bypass.stdout
    links = subprocess.run(["ip", "-n", name, "-o", "link"], capture_output=True, text=True).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    assert subprocess.run(["ip", "-n", name, "route"], capture_output=True, text=True).stdout == ""
    assert [r.path for r in upstream.received] == ["/through"]
