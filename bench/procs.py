"""Subprocesses of a benchmark run (upstream, bare mitmdump, Portcullis gateways) and
their CPU and memory, read from /proc (Linux) so no extra package is needed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mitmdump_executable() -> str:
    """The mitmdump next to this interpreter (the project's .venv), else the one on PATH."""
    candidate = Path(sys.executable).with_name("mitmdump")
    return str(candidate) if candidate.exists() else "mitmdump"


@dataclass(frozen=True)
class Usage:
    cpu: float  # user + system seconds since the process started
    rss: int  # bytes, now
    peak_rss: int  # bytes, high-water mark


def usage(pid: int) -> Usage:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" of comm: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    rss = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return Usage(cpu, rss, peak)


class Process:
    """A subprocess that listens on 127.0.0.1:port; output goes to a log file."""

    def __init__(self, name: str, command: list[str], port: int, log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = command
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self.env = env or {}
        self.popen: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout: float = 60) -> Process:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            environment.pop(name, None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                self.command, cwd=PROJECT_ROOT, env=environment,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; its output:\n{self.output()}")
            time.sleep(0.05)
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def usage(self) -> Usage:
        return usage(self.pid)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def upstream_process(log_dir: Path, cert: Path | None = None, key: Path | None = None) -> Process:
    port = free_port()
    command = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
    if cert is not None and key is not None:
        command += ["--cert", str(cert), "--key", str(key)]
    return Process("upstream-tls" if cert else "upstream", command, port, log_dir)


def mitmdump_process(name: str, log_dir: Path, confdir: Path, *extra: str) -> Process:
    """Bare mitmproxy: no addons, quiet, same CA directory as the gateways."""
    port = free_port()
    command = [mitmdump_executable(), "-q", "--listen-host", "127.0.0.1", "--listen-port",
               str(port), "--set", f"confdir={confdir}", *extra]
    return Process(name, command, port, log_dir)


def gateway_process(name: str, log_dir: Path, rules: Path, confdir: Path, *extra: str) -> Process:
    """A Portcullis gateway, started the way an operator starts it."""
    port = free_port()
    command = [sys.executable, "-m", "gateway", "run", "--listen", f"127.0.0.1:{port}",
               "--rules", str(rules), "--confdir", str(confdir), "--quiet", *extra]
    return Process(name, command, port, log_dir)
