"""python -m bench: the cost of the gateway, side by side with direct calls and bare mitmdump.

    python -m bench                 # everything (about 10 minutes on 2 cores)
    python -m bench --quick         # a 1-minute subset (micro + macro)
    python -m bench --full-targets  # other parts' targets in full form too (+5 minutes)
    python -m bench --targets macro --only bare portcullis-10 --duration 5

Targets: ``micro`` (rule evaluation vs rule count), ``macro`` (the side-by-side scenarios),
``memory`` (RSS after 10k vs 100k flows), and every other module in bench/ (``recording``,
``masking``, ``approvals``, ...): a self-contained target run as ``python -m bench.<name>``,
with ``--quick`` and ``--json PATH`` when its ``--help`` lists them; its output is kept.

Writes bench/results/latest.json, latest.md and latest.png.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import macro, memory, micro, report
from bench.procs import PROJECT_ROOT
from bench.scenarios import PROXIES

RESULTS = Path(__file__).resolve().parent / "results"
BUILTIN = ("micro", "macro", "memory")
#: Modules of this harness; every other bench/<name>.py is a self-contained target owned
#: by another part of the project (recording, masking, approvals, ...), run as a subprocess.
HARNESS = {"__init__", "__main__", "loadgen", "macro", "memory", "micro", "procs", "profile",
           "report", "rulegen", "scenarios", "upstream"}
EXTERNAL = tuple(sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in HARNESS))
EXTERNAL_TIMEOUT_S = {"quick": 120, "full": 240}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1-minute subset")
    parser.add_argument("--targets", help=f"comma-separated subset of {','.join(BUILTIN + EXTERNAL)}")
    parser.add_argument("--skip", default="", help="comma-separated targets not to run")
    parser.add_argument("--full-targets", action="store_true",
                        help="run the other bench/<name>.py targets in their full form, not --quick "
                             "(adds several minutes)")
    parser.add_argument("--only", nargs="+", default=(), metavar="SCENARIO",
                        help="macro: run only these scenarios (all their client counts)")
    parser.add_argument("--clients", nargs="+", type=int, default=(), metavar="N",
                        help="macro: measure only these client counts (of 1, 16, 64)")
    parser.add_argument("--duration", type=float, help="macro: measured seconds per window")
    parser.add_argument("--warmup", type=float, help="macro: warm-up seconds per window")
    parser.add_argument("--repetitions", type=int, help="macro: interleaved repetitions (median reported)")
    parser.add_argument("--memory-flows", default="10000,100000", help="memory: first and last flow count")
    parser.add_argument("--memory-proxy", choices=[p.name for p in PROXIES],
                        help="memory: which gateway (default: p10-rec, recording on)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return parser.parse_args(argv)


def selected_targets(args: argparse.Namespace) -> list[str]:
    present = list(EXTERNAL)
    if args.targets:
        wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in BUILTIN + EXTERNAL]
        if unknown:
            raise SystemExit(f"unknown target(s): {', '.join(unknown)}; known: {', '.join(BUILTIN + EXTERNAL)}")
        return [t for t in wanted if t in BUILTIN or t in present]  # --skip does not apply
    # --quick: this harness's own subset only (the other targets take 10-60 s each even
    # in their short form); name them with --targets to include them.
    chosen = ["micro", "macro"] if args.quick else [*BUILTIN, *present]
    skip = {t.strip() for t in args.skip.split(",")}
    return [t for t in chosen if t not in skip]


def run_external(name: str, quick: bool, workdir: Path) -> dict[str, Any]:
    """Run `python -m bench.<name>` as a subprocess: it owns its setup and its output."""
    base = [sys.executable, "-m", f"bench.{name}"]
    help_text = subprocess.run([*base, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=60).stdout
    command = list(base)
    if quick and "--quick" in help_text:
        command.append("--quick")
    json_path = workdir / f"{name}.json"
    if re.search(r"--json [A-Z_]+", help_text):  # takes a path (not a print-as-JSON flag)
        command += ["--json", str(json_path)]
    timeout = EXTERNAL_TIMEOUT_S["quick" if quick else "full"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + (f"\n[stderr]\n{done.stderr[-3000:]}" if done.returncode else "")
    except subprocess.TimeoutExpired as exc:
        status = f"timed out after {timeout} s"
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    result: dict[str, Any] = {
        "command": shlex.join(["python", "-m", f"bench.{name}", *command[len(base):]]).replace(str(workdir), "$TMP"),
        "status": status, "duration_s": round(time.monotonic() - started, 1), "output": output[-8000:],
    }
    if json_path.exists():
        try:
            result["data"] = json.loads(json_path.read_text())
        except ValueError as exc:
            result["data_error"] = str(exc)
    return result


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs {model}, Linux {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets = selected_targets(args)
    config = macro.Config(quick=args.quick, only=tuple(args.only), clients=tuple(args.clients))
    if args.quick:
        config.duration, config.warmup, config.repetitions = 1.25, 0.5, 2
    for name in ("duration", "warmup", "repetitions"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    import mitmproxy.version

    started = time.monotonic()
    results: dict[str, Any] = {"meta": {
        "command": shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])]),
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "mitmproxy": mitmproxy.version.VERSION, "targets": targets,
    }}
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as scratch:
        workdir = Path(scratch)
        for target in targets:
            print(f"[{time.monotonic() - started:5.0f} s] {target}", flush=True)
            if target == "micro":
                results["micro"] = micro.run(quick=args.quick)
            elif target == "macro":
                results["macro"] = asyncio.run(macro.run(config, workdir / "macro"))
            elif target == "memory":
                low, high = (int(n) for n in args.memory_flows.split(","))
                results["memory"] = asyncio.run(memory.run(workdir / "memory", (low, high),
                                                           proxy=args.memory_proxy))
            else:
                quick = args.quick or not args.full_targets
                results.setdefault("targets_run", {})[target] = run_external(target, quick, workdir)
                print(f"  {results['targets_run'][target]['status']}", flush=True)
    results["targets"] = report.targets(results)
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    text = report.markdown(results)
    (args.out / "latest.md").write_text(text)
    png = report.plot(results, args.out / "latest.png")
    print(text)
    print(f"\nwrote {args.out / 'latest.json'}, latest.md{', latest.png' if png else ''} "
          f"in {results['meta']['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
