"""Start a real Portcullis gateway as a subprocess (`python -m gateway run ...`) for tests.

One mitmproxy master per process is a mitmproxy constraint, so every gateway runs in
its own process, exactly as an operator would start it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway.agent_env import agent_environment
from gateway.settings import PROJECT_ROOT, ca_cert_path

READY_LINE = "Portcullis gateway ready"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    def __init__(self, rules: Path, confdir: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.rules = rules
        self.confdir = confdir
        self.port = free_port()
        self.extra_args = list(extra_args or [])
        self.env = env or {}
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gateway", "run",
            "--listen", f"127.0.0.1:{self.port}",
            "--rules", str(self.rules),
            "--confdir", str(self.confdir),
            *([] if "--db" in self.extra_args else ["--db", str(self.db)]),
            *self.extra_args,
        ]

    @property
    def db(self) -> Path:
        """The recording of this gateway: --db if given, else a file beside the rules."""
        if "--db" in self.extra_args:
            return Path(self.extra_args[self.extra_args.index("--db") + 1])
        return self.rules.parent / f"recording-{self.port}.duckdb"

    def start(self, timeout: float = 30) -> GatewayProcess:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            environment.pop(name, None)
        self.process = subprocess.Popen(
            self.command, cwd=PROJECT_ROOT, env=environment, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, errors="replace",
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start:\n{self.output}")
        return self

    def _pump(self) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if READY_LINE in line:
                self._ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in gateway output:\n{self.output}")

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return ca_cert_path(self.confdir)

    def agent_env(self) -> dict[str, str]:
        return agent_environment("127.0.0.1", self.port, self.ca_cert)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
