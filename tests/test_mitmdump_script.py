"""The same addons load into plain mitmproxy: mitmdump -s addons/portcullis.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from gateway.settings import PROJECT_ROOT
from tests.support.gateway import free_port

RULES = """\
version: 1
rules:
  - name: no-deletes
    match: {method: DELETE}
    action: block
    reason: "read-only agent"
"""


def test_mitmdump_loads_the_portcullis_addons(tmp_path, confdir, upstream):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    mitmdump = Path(sys.executable).with_name("mitmdump")
    process = subprocess.Popen(
        [str(mitmdump), "-s", "addons/portcullis.py", "--listen-host", "127.0.0.1", "-p", str(port),
         "--set", f"confdir={confdir}", "--set", f"portcullis_rules={rules}"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    try:
        proxies = {"http": f"http://127.0.0.1:{port}"}
        deadline = time.monotonic() + 30
        while True:
            try:
                allowed = requests.get(upstream.url("/x"), proxies=proxies, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "".join(lines)
                time.sleep(0.2)
        blocked = requests.delete(upstream.url("/x"), proxies=proxies, timeout=5)
    finally:
        process.terminate()
        process.wait(20)
    assert allowed.status_code == 200
    assert allowed.headers["X-Portcullis-Decision"] == "allowed"
    assert blocked.status_code == 403
    assert blocked.json()["rule"] == "no-deletes"
    assert [r.method for r in upstream.received] == ["GET"]
