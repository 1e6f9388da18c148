#!/usr/bin/env python3
"""Set up a virtual environment and run Portcullis or its test suite.

    python3 dev.py run [portcullis run options]   # set up, then start the gateway
    python3 dev.py test [pytest options]          # set up, then ruff + the suite on both Python lines
    python3 dev.py test --py 3.12 [pytest options]  # one line only (3.11 or 3.12)
    python3 dev.py bench [bench options]          # set up, then the benchmarks

Needs only Python 3.11+ and pip. The environment of the interpreter running dev.py lives
in .venv; the other supported line's (Python 3.12 + mitmproxy 12 when dev.py runs on
3.11, and the other way round) in .venv312 or .venv311, created with an interpreter
found on PATH (python3.12) or under pyenv. Each is reinstalled when pyproject.toml changes.

`dev.py test` runs both lines at once, one pytest each: the running interpreter's line
the whole suite (printed live), the other line the modules that drive mitmproxy (a real
gateway or mitmdump, or mitmproxy in-process) except the browser tests (printed when it
is done). The first line's pytest spreads the suite over 2 pytest-xdist workers (pyproject's
addopts: ``-n auto --dist loadfile``; tests/conftest.py picks 2 workers for a run of many
modules and none for a few; PORTCULLIS_TEST_WORKERS=N overrides); a module stays on one
worker, so the gateway its tests share is started once. The second line runs in one
process beside them: the machine's cores are then busy, and more processes would only
make the timing-sensitive tests (timeouts, expiries) wait for a core. The last line printed is "N passed, N failed" over both lines (failed counts
failed tests, errors, and a failed ruff); the exit code is non-zero if anything failed.
Pytest args that name tests (paths, node ids) replace the default selection on every
line; other options are added to it. If the other line's
interpreter is missing the run fails under CI (CI set) and warns otherwise.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BIN_DIR = "Scripts" if os.name == "nt" else "bin"
VENV = ROOT / ".venv"
BIN = VENV / BIN_DIR
LINES = ("3.11", "3.12")  # Python lines CI tests; mitmproxy 11 on 3.11, 12 on 3.12
LOG_DIR = ROOT / "build"
#: A test module drives mitmproxy (so belongs on the second line) if it mentions one of these.
MITMPROXY_MARKERS = re.compile(
    r"start_gateway|shared_gateway|GatewayProcess|mitmdump|ReviewRig|use_gateway|mitmproxy"
)


@dataclass
class Leg:
    line: str  # "3.11"
    python: str  # interpreter that creates the venv
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / BIN_DIR


def current_line() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _wanted_stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{digest}:{extras}"


def ensure_venv(extras: str, leg: Leg | None = None) -> None:
    """Create the leg's venv (default: .venv) and install the project (editable) with extras, once."""
    leg = leg or Leg(current_line(), sys.executable, VENV)
    stamp = leg.venv / ".dev-stamp"
    if not (leg.bin / "python").exists():
        print(f"dev.py: creating {leg.venv} (Python {leg.line})", flush=True)
        started = time.monotonic()
        if leg.python == sys.executable:
            venv.EnvBuilder(with_pip=True).create(leg.venv)
        else:
            subprocess.check_call([leg.python, "-m", "venv", str(leg.venv)])
        print(f"dev.py: created {leg.venv} in {time.monotonic() - started:.0f} s", flush=True)
    wanted = _wanted_stamp(extras)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    print(f"dev.py: installing portcullis[{extras}] into {leg.venv}", flush=True)
    started = time.monotonic()
    subprocess.check_call(
        [str(leg.bin / "python"), "-m", "pip", "install", "--quiet", "-e", f".[{extras}]"], cwd=ROOT
    )
    print(f"dev.py: installed into {leg.venv} in {time.monotonic() - started:.0f} s", flush=True)
    stamp.write_text(wanted)


def find_python(line: str) -> str | None:
    """An interpreter for a Python line: PATH, then pyenv's versions. None if there is none."""
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates = [shutil.which(f"python{line}")]
    candidates += sorted(glob.glob(f"{pyenv}/versions/{line}.*/bin/python{line}"), reverse=True)
    for candidate in filter(None, candidates):
        try:  # pyenv's shims exist on PATH even when they cannot run that version
            probe = subprocess.run([candidate, "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
                                   capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == line:
            return candidate
    return None


def other_leg() -> Leg | None | str:
    """The second line's leg; None when dev.py runs on neither line; its name if not found."""
    here = current_line()
    if here not in LINES:
        return None
    line = next(other for other in LINES if other != here)
    python = find_python(line)
    if python is None:
        return line
    return Leg(line, python, ROOT / f".venv{line.replace('.', '')}")


def mitmproxy_modules() -> list[str]:
    """The test modules that drive mitmproxy: the second line's default selection."""
    return [str(path.relative_to(ROOT)) for path in sorted((ROOT / "tests").glob("test_*.py"))
            if MITMPROXY_MARKERS.search(path.read_text(encoding="utf-8"))]


def names_tests(args: list[str]) -> bool:
    """Whether pytest args name tests (paths, node ids) rather than only give options."""
    return any(not arg.startswith("-") and (ROOT / arg.split("::", 1)[0]).exists() for arg in args)


#: A module that fails to import is one error in the tally, not the end of that line's run.
KEEP_GOING = ["--continue-on-collection-errors"]

SUMMARY = re.compile(r"(\d+) (passed|failed|errors?)\b")


def tally(output: str) -> tuple[int, int] | None:
    """(passed, failed + errors) from pytest's closing summary line, None if it has none."""
    lines = [line for line in output.splitlines() if " in " in line and SUMMARY.search(line)]
    if not lines:
        return None
    counts = {kind.rstrip("s"): int(n) for n, kind in SUMMARY.findall(lines[-1])}
    return counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0)


def run_tests(rest: list[str]) -> int:
    only = None
    if rest[:1] == ["--py"] and len(rest) > 1:
        only, rest = rest[1], rest[2:]
        if only not in LINES:
            print(f"dev.py: --py takes one of {', '.join(LINES)}", file=sys.stderr)
            return 2
    primary = Leg(current_line(), sys.executable, VENV)
    second = other_leg()
    failures = 0
    if isinstance(second, str) or second is None:
        missing = second or f"{', '.join(LINES)} (dev.py runs on {current_line()})"
        print(f"dev.py: WARNING: no Python {missing} interpreter found (PATH python{missing} "
              "or pyenv): that line is not tested", flush=True)
        if os.environ.get("CI"):
            failures += 1
        second = None
    legs = [leg for leg in (primary, second) if leg is not None and only in (None, leg.line)]
    if not legs:
        print(f"dev.py: no interpreter for Python {only}", file=sys.stderr)
        return 1
    for leg in legs:
        ensure_venv("test", leg)
    lint = subprocess.call([str(legs[0].bin / "ruff"), "check", "."], cwd=ROOT)
    if lint:
        print("dev.py: ruff check failed", flush=True)
        failures += 1

    # Background legs write a log each and are shown when done; the first runs in the terminal.
    LOG_DIR.mkdir(exist_ok=True)
    background = []
    for leg in legs[1:]:
        selection = rest if names_tests(rest) else ["-m", "not browser", *mitmproxy_modules(), *rest]
        log_path = LOG_DIR / f"test-py{leg.line}.log"
        print(f"dev.py: Python {leg.line} runs {'the given tests' if names_tests(rest) else 'the mitmproxy modules'}"
              f" in the background; output in {log_path.relative_to(ROOT)}", flush=True)
        log = log_path.open("w")
        command = [str(leg.bin / "python"), "-m", "pytest", "-p", "no:cacheprovider", *KEEP_GOING, *selection]
        environment = {"PORTCULLIS_TEST_WORKERS": "0", **os.environ}  # see the module docstring
        background.append((leg, log_path, log, subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)))
    print(f"dev.py: ===== Python {legs[0].line} =====", flush=True)
    outputs = [(legs[0], _run_live(legs[0], rest))]
    for leg, log_path, log, process in background:
        process.wait()
        log.close()
        text = log_path.read_text(errors="replace")
        print(f"\ndev.py: ===== Python {leg.line} (from {log_path.relative_to(ROOT)}) =====", flush=True)
        print(text, end="" if text.endswith("\n") else "\n", flush=True)
        outputs.append((leg, (process.returncode, text)))
    passed = 0
    for leg, (code, text) in outputs:
        counts = tally(text)
        if counts is None:
            print(f"dev.py: Python {leg.line}: pytest exited {code} without a summary", flush=True)
            failures += 1
            continue
        passed += counts[0]
        failures += counts[1]
        if code and not counts[1]:
            failures += 1  # e.g. a collection or usage error
        print(f"dev.py: Python {leg.line}: {counts[0]} passed, {counts[1]} failed (exit {code})", flush=True)
    print(f"{passed} passed, {failures} failed", flush=True)
    return 1 if failures else 0


def _run_live(leg: Leg, rest: list[str]) -> tuple[int, str]:
    """Run pytest in the terminal, keeping a copy of its output for the closing tally."""
    process = subprocess.Popen([str(leg.bin / "python"), "-m", "pytest", *KEEP_GOING, *rest], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", bufsize=1)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        seen.append(line)
    return process.wait(), "".join(seen)


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
    return run_tests(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
