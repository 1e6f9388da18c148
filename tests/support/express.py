"""A real Node.js (Express) app on 127.0.0.1 for tests where framework behaviour matters.

Some attacks only work because of what a real framework does with a request (Express's
``method-override`` turns a POST into a DELETE, ``qs`` turns ``a[]=1`` into an array,
...). A Python imitation would encode our own assumptions, so these tests run the real
thing: the npm packages are installed once into a cache directory
(``~/.cache/portcullis-tests/node/<hash of the package list>``, or
``$PORTCULLIS_TEST_NODE_CACHE``) and reused by later runs; the app source is written to a
temporary directory and started with ``node`` on a free port.

Usage::

    with node_app(APP_JS, packages=("express@4", "method-override@3")) as app:
        requests.get(app.url("/v1/tables"))
        app.logged   # lines the app printed (console.log), in order
        app.json_logged()  # the ones that are JSON, parsed

The app reads its port from ``process.env.PORT`` and must listen on 127.0.0.1. If npm
is missing or the registry unreachable, the test is skipped with a message saying so;
any other install failure is an error.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

DEFAULT_PACKAGES = ("express@4",)
_NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET",
                   "network", "ENETUNREACH")


def cache_root() -> Path:
    configured = os.environ.get("PORTCULLIS_TEST_NODE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "portcullis-tests" / "node"


def node_modules(packages: Iterable[str]) -> Path:
    """A node_modules directory with these packages (npm specs), installed once and cached."""
    specs = sorted(packages)
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed: cannot run the real Express app")
    directory = cache_root() / hashlib.sha256("\n".join(specs).encode()).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    done = directory / ".installed"
    with open(directory / ".lock", "w") as lock:  # parallel test runs install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            result = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--no-save", "--prefix",
                 str(directory), *specs],
                capture_output=True, text=True, timeout=300,
            )
            if result.returncode != 0:
                output = result.stdout + result.stderr
                if any(marker in output for marker in _NETWORK_ERRORS):
                    pytest.skip(f"npm registry unreachable, cannot install {specs}: "
                                f"{output.strip().splitlines()[-1:]}")
                raise RuntimeError(f"npm install {specs} failed:\n{output}")
            done.write_text("\n".join(specs))
    return directory / "node_modules"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NodeApp:
    """A running ``node app.js``; ``logged`` holds what it printed."""

    def __init__(self, source: str, packages: Iterable[str] = DEFAULT_PACKAGES) -> None:
        self.modules = node_modules(packages)
        self.directory = Path(tempfile.mkdtemp(prefix="portcullis-node-"))
        (self.directory / "app.js").write_text(source)
        self.port = _free_port()
        self.logged: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20) -> NodeApp:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(PORT=str(self.port), NODE_PATH=str(self.modules))
        self.process = subprocess.Popen(
            ["node", "app.js"], cwd=self.directory, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, errors="replace",
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node app.js exited:\n{self.output}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"node app.js did not listen on {self.port}:\n{self.output}")

    def _pump(self) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            self.logged.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.logged)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def json_logged(self) -> list[Any]:
        """The lines the app logged that are JSON (e.g. ``console.log(JSON.stringify(...))``)."""
        parsed = []
        for line in list(self.logged):
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
        return parsed

    def clear_log(self) -> None:
        self.logged.clear()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def node_app(source: str, packages: Iterable[str] = DEFAULT_PACKAGES) -> Iterator[NodeApp]:
    """Run ``source`` as app.js with ``packages`` installed; stopped on exit."""
    app = NodeApp(source, packages).start()
    try:
        yield app
    finally:
        app.stop()
