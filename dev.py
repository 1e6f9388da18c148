#!/usr/bin/env python3
"""Set up a virtual environment and run Portcullis or its test suite.

    python3 dev.py run [portcullis run options]   # set up, then start the gateway
    python3 dev.py test [pytest options]          # set up, then ruff + the whole test suite
    python3 dev.py bench [bench options]          # set up, then the benchmarks

Needs only Python 3.11+ and pip. The environment lives in .venv and is
reinstalled when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".dev-stamp"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _wanted_stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{digest}:{extras}"


def ensure_venv(extras: str) -> None:
    """Create .venv and install the project (editable) with the given extras, once."""
    if not (BIN / "python").exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = _wanted_stamp(extras)
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print(f"dev.py: installing portcullis[{extras}] into {VENV}", flush=True)
    subprocess.check_call(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", f".[{extras}]"], cwd=ROOT
    )
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "bench"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        ensure_venv("test")
        os.execv(str(BIN / "portcullis"), [str(BIN / "portcullis"), "run", *rest])
    if command == "bench":
        ensure_venv("test,bench")
        return subprocess.call([str(BIN / "python"), "-m", "bench", *rest], cwd=ROOT)
    ensure_venv("test")
    lint = subprocess.call([str(BIN / "ruff"), "check", "."], cwd=ROOT)
    tests = subprocess.call([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT)
    return tests or lint


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
