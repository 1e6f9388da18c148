"""A wheel install (not editable) works from anywhere: `pip install .`, then `portcullis run`.

What a user does after `pip install portcullis`, done for real in a fresh venv:

1. the sources are copied to a temporary directory (the build writes build/ and
   *.egg-info next to them; two test lines building in the clone at once would race),
2. ``python -m venv`` creates a new environment, and ``pip install`` builds the wheel
   from the copy and installs it there, NOT editable;
3. from an empty directory, with HOME a fresh temporary directory, the installed
   ``portcullis run`` (a real gateway: mitmproxy in its own process; so this module also
   runs on dev.py's second Python line) starts with no flags but its two listen addresses (8080/8081 are
   not free on a shared test machine), prints its ready line, and forwards one agent
   request to a real upstream;
4. the default rules came from the wheel (gateway/shipped_rules/), the CA, keys and the
   recording are in ~/.portcullis, and nothing was written into the venv (site-packages)
   or the current directory.

To stay offline and fast (about 10 s, not minutes), the fresh venv gets the runtime
dependencies from the running test environment through a .pth file of plain paths (no
.pth of that environment runs, so its editable install of Portcullis is not seen), and
the wheel is built without build isolation (setuptools from the test extra). Only
Portcullis itself is built and installed for real, which is what this test is about.
"""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from recordings.control import ask
from tests.support.gateway import READY_LINE, free_port
from tests.support.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parent.parent
#: What the wheel is built from: the packaging files and every shipped tree.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
           "rules", "addons", "gateway", "recordings", "review_ui")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.duckdb*", "*.egg-info")


def copy_sources(target: Path) -> Path:
    target.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=JUNK)
        else:
            shutil.copy2(source, target / name)
    return target


def fresh_venv(directory: Path) -> Path:
    """A new venv whose imports fall back on this environment's site-packages (deps only)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=60)
    python = directory / "bin" / "python"
    (purelib,) = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.split()
    # Plain directory lines: appended to sys.path after the venv's own site-packages, and
    # the .pth files in them (this environment's editable Portcullis) are not run.
    Path(purelib, "zz_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PORTCULLIS_", "XDG_", "PYTHON")) and k.lower() not in ("http_proxy", "https_proxy")}
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1"}


class Output:
    """A process's output lines, read on a thread; wait() for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.process = process
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if found := next((line for line in self.lines if text in line), None):
                return found
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not printed:\n" + "\n".join(self.lines))


@pytest.fixture
def short_home() -> Iterator[Path]:
    """An empty HOME with a short path: the recording's control socket lives beside the
    database in it, and AF_UNIX paths stop at 107 bytes (tmp_path under pytest-xdist is
    /tmp/pytest-of-USER/pytest-N/popen-gwN/NAME/, too long for .portcullis/portcullis.duckdb.sock)."""
    home = Path(tempfile.mkdtemp(prefix="pc-home-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_a_wheel_install_runs_with_no_flags_from_anywhere(tmp_path: Path, short_home: Path,
                                                          upstream: UpstreamServer):
    started = time.monotonic()
    source = copy_sources(tmp_path / "src")
    venv = tmp_path / "venv"
    python = fresh_venv(venv)
    home, elsewhere = short_home, tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(home)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "--no-index", "--disable-pip-version-check", "--quiet", str(source)],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stdout + install.stderr
    installed_at = time.monotonic() - started

    # Not editable: the installed modules are the venv's own copies, not the clone's or the copy's.
    where = subprocess.run([str(python), "-c", "import gateway, addons, review_ui; print(gateway.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    shipped = Path(where).parent / "shipped_rules" / "default.yaml"
    assert shipped.read_text() == (ROOT / "rules" / "default.yaml").read_text()
    before = files_under(venv)

    proxy_port, ui_port = free_port(), free_port()
    gateway = subprocess.Popen(
        [str(venv / "bin" / "portcullis"), "run", "--listen", f"127.0.0.1:{proxy_port}", "--ui", f"127.0.0.1:{ui_port}"],
        cwd=elsewhere, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, errors="replace")
    output = Output(gateway)
    try:
        output.wait(READY_LINE, timeout=60)
        state = home / ".portcullis"
        db = state / "portcullis.duckdb"
        recording = output.wait("recording:", timeout=5)
        assert str(db) in recording, recording
        assert str(shipped) in output.wait("rules:", timeout=5)

        with requests.Session() as agent:
            agent.trust_env = False
            response = agent.get(upstream.url("/v1/packaging?probe=1"), timeout=30,
                                 proxies={"http": f"http://127.0.0.1:{proxy_port}"})
        assert response.status_code == 200, response.text
        assert response.headers["X-Portcullis-Decision"] == "allowed"
        assert [r.path for r in upstream.received] == ["/v1/packaging?probe=1"]

        deadline = time.monotonic() + 10
        rows: list = []
        while not rows and time.monotonic() < deadline:
            rows = ask(db, "/query", {"sql": "SELECT path, decision FROM flows WHERE query = 'probe=1'"})["rows"]
            time.sleep(0.1)
        assert rows == [["/v1/packaging", "allowed"]]
        assert (state / "mitmproxy-ca-cert.pem").is_file() and (state / "portcullis-mask.key").is_file()
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(20)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
    assert gateway.returncode == 0, "\n".join(output.lines)
    assert files_under(venv) == before, "the gateway wrote into its installation"
    assert list(elsewhere.iterdir()) == [], "the gateway wrote into the current directory"
    print(f"built and installed in {installed_at:.1f} s; whole test {time.monotonic() - started:.1f} s")
