"""Run `portcullis ...` for a test: as its own process, or in this one (no interpreter start)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

from gateway import cli
from gateway.settings import PROJECT_ROOT


def portcullis(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` in the project root, output captured."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def portcullis_here(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command in this process (gateway.cli.main): no interpreter start per call.
    Each behaviour keeps one call through the real ``python -m gateway`` (portcullis())."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
