"""Run `portcullis ...` for a test: as its own process (forked from the zygote where it can
be), or in this one (no process at all)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from gateway import cli
from gateway.settings import PROJECT_ROOT
from tests.support import zygote


def portcullis(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
               cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` (in the project root by default), output captured: a fork
    of the zygote (tests/support/zygote.py) where it may be one, else a new interpreter."""
    if zygote.wanted(dict(os.environ if env is None else env)):
        return zygote.run("gateway", list(args), env=env, cwd=cwd, timeout=timeout)
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
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
