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

`dev.py test` runs both lines at once: the running interpreter's line the whole suite
(printed live), the other line the modules that drive mitmproxy (a real gateway or
mitmdump, or mitmproxy in-process) except the browser tests (printed when it is done).
The first line's pytest spreads the suite over pytest-xdist workers (pyproject's
addopts: ``-n auto --dist loadfile``; tests/conftest.py picks 4 workers for a run of many
modules, since much of a test's time is waiting, and none for a few; with the second
line beside it, 2 (BESIDE_WORKERS); PORTCULLIS_TEST_WORKERS=N overrides); a module stays
on one worker, so the gateway its tests share is started once. The second line runs in one
process beside them: the machine's cores are then busy, and more processes would only
make the timing-sensitive tests (timeouts, expiries) wait for a core. When the first
line is done, a second process of the second line takes the modules set aside for it,
so the freed core is used: which ones comes from the seconds each module took in the
last full run (build/module-durations.json, else the seed tests/module-durations.json),
sized so that both processes end together.

The last line printed is "N passed, N failed" over both lines (failed counts failed
tests, errors, and a failed ruff); the exit code is non-zero if anything failed. Pytest
args that name tests (paths, node ids) replace the default selection on every line;
other options are added to it. If the other line's interpreter is missing the run fails
under CI (CI set) and warns otherwise.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
import xml.etree.ElementTree as ElementTree
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


#: Seconds per second-line module and the first line's wall time, from a recent full run:
#: the seed in the repository, then what each full run measured (build/, not committed).
DURATIONS_SEED = ROOT / "tests" / "module-durations.json"
DURATIONS = LOG_DIR / "module-durations.json"


def load_durations() -> dict:
    for path in (DURATIONS, DURATIONS_SEED):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return {}


def split_late(modules: list[str], durations: dict) -> tuple[list[str], list[str]]:
    """The second line's modules as (early, late): early runs beside the first line from
    the start, late once the first line is done and its core is free, sized so that both
    end together. Modules without a measured time go early; no data, no split."""
    seconds = durations.get("modules", {})
    first_line = durations.get("first_line_s", 0.0)
    total = sum(seconds.get(module, 0.0) for module in modules)
    share = (total - first_line) / 2  # after the first line ends, two processes share the rest
    late: list[str] = []
    late_total = 0.0
    for module in sorted((m for m in modules if m in seconds), key=seconds.get, reverse=True):
        if late_total + seconds[module] <= share:
            late.append(module)
            late_total += seconds[module]
    return [m for m in modules if m not in late], [m for m in modules if m in late]


def module_seconds(junit_files: list[Path]) -> dict[str, float]:
    """Seconds per test module (setup, call and teardown) from pytest's JUnit XML files."""
    totals: dict[str, float] = {}
    for path in junit_files:
        try:
            root = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError):
            continue
        for case in root.iter("testcase"):
            parts = case.get("classname", "").split(".")
            # "tests.test_x" or "tests.test_x.TestClass": the module is the test_* part
            index = next((i for i, part in enumerate(parts) if part.startswith("test_")), None)
            if index is None:
                continue
            module = "/".join(parts[:index + 1]) + ".py"
            totals[module] = round(totals.get(module, 0.0) + float(case.get("time") or 0), 2)
    return totals


#: A module that fails to import is one error in the tally, not the end of that line's run.
KEEP_GOING = ["--continue-on-collection-errors"]

SUMMARY = re.compile(r"(\d+) (passed|failed|errors?)\b")


#: pytest's closing line when a filter (-k, -m) left it nothing to run: nothing failed.
NOTHING_RAN = re.compile(r"(\d+ deselected|no tests ran)\b.* in [\d.]+s")
#: Options that narrow the selection: a run with one does not measure whole modules.
NARROWING = ("-k", "-m", "--lf", "--last-failed", "--deselect", "-x", "--exitfirst", "--maxfail", "--sw")


def tally(output: str) -> tuple[int, int] | None:
    """(passed, failed + errors) from pytest's closing summary line, None if it has none."""
    lines = [line for line in output.splitlines() if " in " in line and SUMMARY.search(line)]
    if not lines:
        closing = [line for line in output.splitlines() if NOTHING_RAN.search(line)]
        return (0, 0) if closing else None
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
    # The second line's default selection is split in two processes: one beside the first
    # line from the start, one once the first line is done (see split_late).
    LOG_DIR.mkdir(exist_ok=True)
    for stale in LOG_DIR.glob("junit-py*.xml"):
        stale.unlink()
    durations = load_durations()
    background, late = [], []
    for leg in legs[1:]:
        if names_tests(rest):
            early_modules, late_modules = [], []
            selection = rest
        else:
            early_modules, late_modules = split_late(mitmproxy_modules(), durations)
            selection = ["-m", "not browser", *early_modules, *rest]
        print(f"dev.py: Python {leg.line} runs {'the given tests' if names_tests(rest) else 'the mitmproxy modules'}"
              f" in the background; output in {(LOG_DIR / f'test-py{leg.line}.log').relative_to(ROOT)}"
              + (f" (and {len(late_modules)} modules once Python {legs[0].line} is done)" if late_modules else ""),
              flush=True)
        background.append(_start_background(leg, "", selection))
        if late_modules:
            late.append((leg, ["-m", "not browser", *late_modules, *rest]))
    print(f"dev.py: ===== Python {legs[0].line} =====", flush=True)
    started = time.monotonic()
    outputs = [(legs[0], _run_live(legs[0], rest, beside=bool(background)))]
    first_line_s = time.monotonic() - started
    background += [_start_background(leg, "-late", selection) for leg, selection in late]
    for leg, log_path, log, process in background:
        process.wait()
        log.close()
        text = log_path.read_text(errors="replace")
        print(f"\ndev.py: ===== Python {leg.line} (from {log_path.relative_to(ROOT)}) =====", flush=True)
        print(text, end="" if text.endswith("\n") else "\n", flush=True)
        outputs.append((leg, (process.returncode, text)))
    if legs[1:] and not names_tests(rest) and not any(arg.split("=", 1)[0] in NARROWING for arg in rest):
        measured = module_seconds(sorted(LOG_DIR.glob(f"junit-py{legs[1].line}*.xml")))
        DURATIONS.write_text(json.dumps({"first_line_s": round(first_line_s, 1),
                                         "modules": dict(sorted(measured.items()))}, indent=1) + "\n")
    passed = 0
    for leg, (code, text) in outputs:
        counts = tally(text)
        if counts is None:
            print(f"dev.py: Python {leg.line}: pytest exited {code} without a summary", flush=True)
            failures += 1
            continue
        passed += counts[0]
        failures += counts[1]
        if code and code != 5 and not counts[1]:  # 5: a filter left this process nothing to run
            failures += 1  # e.g. a collection or usage error
        print(f"dev.py: Python {leg.line}: {counts[0]} passed, {counts[1]} failed (exit {code})", flush=True)
    print(f"{passed} passed, {failures} failed", flush=True)
    return 1 if failures else 0


def _start_background(leg: Leg, suffix: str, selection: list[str]):
    """Start one background pytest of a leg: (leg, log path, log file, process)."""
    log_path = LOG_DIR / f"test-py{leg.line}{suffix}.log"
    junit = LOG_DIR / f"junit-py{leg.line}{suffix}.xml"
    junit.unlink(missing_ok=True)
    log = log_path.open("w")
    command = [str(leg.bin / "python"), "-m", "pytest", "-p", "no:cacheprovider", *KEEP_GOING,
               f"--junitxml={junit}", *selection]
    environment = {"PORTCULLIS_TEST_WORKERS": "0", **os.environ}  # see the module docstring
    return leg, log_path, log, subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log,
                                                stderr=subprocess.STDOUT)


#: The first line's xdist workers while the second line runs beside it (tests/conftest.py's
#: 4 when it runs alone): with 4 the second line's process became the slower one (7:28
#: against 6:48) and a load average of 23 made a PostgreSQL connect time out.
BESIDE_WORKERS = "2"


def _run_live(leg: Leg, rest: list[str], beside: bool = False) -> tuple[int, str]:
    """Run pytest in the terminal, keeping a copy of its output for the closing tally
    (``beside``: another line's tests run at the same time)."""
    environment = {"PORTCULLIS_TEST_WORKERS": BESIDE_WORKERS, **os.environ} if beside else None
    process = subprocess.Popen([str(leg.bin / "python"), "-m", "pytest", *KEEP_GOING, *rest], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", bufsize=1, env=environment)
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
