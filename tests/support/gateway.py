"""Start a real Portcullis gateway as a subprocess (`python -m gateway run ...`) for tests.

One mitmproxy master per process is a mitmproxy constraint, so every gateway runs in
its own process, exactly as an operator would start it. A new interpreter spends about a
second of CPU on imports, so a gateway is a fork of this test process's zygote
(tests/support/zygote.py: third-party modules already imported, ``python -m gateway``
run in the child; ~0.3 s to ready) unless PORTCULLIS_TEST_FORK=0 or the test's
environment changes a PYTHON* variable. A graceful stop costs more CPU again, so:

- the one way to start a gateway is ``GatewayProcess`` (``start_gateway`` per test and
  ``module_gateway`` per module in conftest, ``ReviewRig`` for the review UI all use it);
- a test module whose tests only need different rules shares one process
  (``module_gateway``) and gives each test its rules by hot reload (``reload_rules``)
  or by one combined rules file, rather than starting a process per test;
- fixtures stop their gateways with ``stop_soon()``: SIGTERM now, the exit is awaited
  by ``reap()`` (later, or at the end of the session), so the next test need not wait
  for this gateway's graceful shutdown. A test that checks how a gateway stops (or
  reads its recording afterwards) calls ``stop()``, which waits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.agent_env import agent_environment
from gateway.settings import PROJECT_ROOT, ca_cert_path
from tests.support import zygote

READY_LINE = "Portcullis gateway ready"
#: The policy addon's log line once a rules file (first load or a reload) is in force.
LOADED_LINE = "loaded {count} rules from {path} "

#: Gateways told to stop (stop_soon) whose exit nobody has awaited yet; see reap().
_stopping: list[GatewayProcess] = []


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
        self.process: subprocess.Popen[str] | zygote.ForkedProcess | None = None

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
        python, *module = self.command[:3]
        if python == sys.executable and module == ["-m", "gateway"] and zygote.wanted(environment):
            self.process = zygote.Zygote.get().spawn("gateway", self.command[3:], environment, PROJECT_ROOT)
        else:
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
        """Signal the gateway and wait for it to exit (killed after ``timeout``); its exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop_soon(self) -> None:
        """SIGTERM now; ``reap()`` awaits the exit. For fixture teardown, where nothing
        reads the gateway after it is told to stop."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        _stopping.append(self)
        if len(_stopping) > 4:  # bound the gateways shutting down at once
            reap(keep=2)

    def lines_since(self, mark: int) -> list[str]:
        """Output lines printed after ``mark`` (``len(gateway.lines)`` taken earlier)."""
        return self.lines[mark:]

    def wait_for_output_after(self, mark: int, text: str, timeout: float = 10) -> str:
        """The first line after ``mark`` containing ``text`` (polled; AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[mark:]:
                if text in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in gateway output after line {mark}:\n"
                             + "\n".join(self.lines[mark:]))

    def reload_rules(self, rules: str, count: int | None = None, timeout: float = 10) -> None:
        """Replace the rules file and wait until the gateway says the new rules are in force.

        The file is written whole (a temporary file renamed over it: a new inode, which
        the watcher's signature notices), so the watcher never reads half an edit. The
        policy addon logs "loaded N rules from PATH" on each (re)load; ``count`` checks N.
        """
        mark = len(self.lines)
        partial = self.rules.with_name(self.rules.name + ".partial")
        partial.write_text(textwrap.dedent(rules))
        os.replace(partial, self.rules)
        loaded = LOADED_LINE.format(count=count, path=self.rules) if count is not None \
            else f" rules from {self.rules} "
        self.wait_for_output_after(mark, loaded, timeout)


def reap(keep: int = 0, timeout: float = 20) -> None:
    """Await the exit of gateways told to stop_soon(), oldest first, until ``keep`` are left."""
    while len(_stopping) > keep:
        gateway = _stopping.pop(0)
        assert gateway.process is not None
        try:
            gateway.process.wait(timeout)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()


@contextmanager
def running_gateway(rules: Path, confdir: Path, *extra_args: str, env: dict[str, str] | None = None,
                    timeout: float = 30) -> Iterator[GatewayProcess]:
    """A started gateway for the ``with`` block; told to stop (stop_soon) when it ends."""
    gateway = GatewayProcess(rules, confdir, list(extra_args), env).start(timeout)
    try:
        yield gateway
    finally:
        gateway.stop_soon()
