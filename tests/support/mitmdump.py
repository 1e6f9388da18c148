"""Run the Portcullis addons inside plain mitmproxy (`mitmdump -s addons/portcullis.py`)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.settings import PROJECT_ROOT
from tests.support.gateway import free_port

LISTENING = "proxy listening at"


@contextmanager
def mitmdump(confdir: Path, rules: Path, *options: str, timeout: float = 30) -> Iterator[dict[str, str]]:
    """Start mitmdump with the addons and `--set` options; yield `requests` proxies for it."""
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mitmdump")), "-s", "addons/portcullis.py",
        "--listen-host", "127.0.0.1", "-p", str(port),
        "--set", f"confdir={confdir}", "--set", f"portcullis_rules={rules}",
    ]
    for option in options:
        command += ["--set", option]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while not any(LISTENING in line for line in output):
            assert process.poll() is None and time.monotonic() < deadline, "".join(output)
            time.sleep(0.05)
        yield {"http": f"http://127.0.0.1:{port}", "https": f"http://127.0.0.1:{port}"}
    finally:
        process.terminate()
        process.wait(20)
