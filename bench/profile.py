"""Profile one scenario's proxy process with py-spy while the load generator drives it.

    python -m bench.profile portcullis-10 --clients 16 --seconds 10

Needs py-spy (``pip install py-spy``). Writes a collapsed-stack file (flamegraph input)
and prints the hottest functions, inclusive and self, so Portcullis's own share of the
CPU can be told apart from mitmproxy's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import loadgen
from bench.macro import Environment
from bench.scenarios import PROXIES, SCENARIOS


def summarize(collapsed: Path, top: int = 30, focus: str = "") -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [f"{total} samples", "inclusive:"]
    lines += [f"  {n / total:6.1%} {k}" for k, n in inclusive.most_common(400) if focus in k][:top]
    lines += ["self:"] + [f"  {n / total:6.1%} {k}" for k, n in own.most_common(top)]
    return "\n".join(lines)


async def drive(env: Environment, scenario, clients: int, seconds: float) -> loadgen.WindowResult:
    return await loadgen.run_window(env.target(scenario), scenario.requests, clients, seconds, 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=[s.name for s in SCENARIOS if s.proxy])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--focus", default="", help="only list inclusive frames containing this text")
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile.collapsed"))
    parser.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL")
    parser.add_argument("--idle", action="store_true", help="include idle (waiting) samples")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    scenario = next(s for s in SCENARIOS if s.name == args.scenario)
    spec = next(p for p in PROXIES if p.name == scenario.proxy)
    with tempfile.TemporaryDirectory(prefix="portcullis-profile-") as scratch:
        env = Environment(Path(scratch), [spec])
        try:
            env.start(print)
            pid = env.proxies[spec.name].pid
            args.out.parent.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r", "200",
                                    "-f", "raw", "-o", str(args.out), "--nonblocking", "--threads",
                                    *(["--gil"] if args.gil else []), *(["--idle"] if args.idle else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = asyncio.run(drive(env, scenario, args.clients, args.seconds + 1))
            spy.wait()
        finally:
            env.stop()
    print(f"{result.rps:.0f} req/s, p50 {result.percentile(50):.2f} ms")
    print(summarize(args.out, focus=args.focus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
