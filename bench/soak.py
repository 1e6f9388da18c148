"""Soak: a fixed request rate for N minutes; is the gateway's memory flat over time?

    python -m bench.soak                          # 30 minutes at 100 req/s
    python -m bench.soak --minutes 12 --rate 80 --json soak.json
    python -m bench.soak --minutes 5 --tracemalloc  # also: which Python lines grew

``bench.load`` asks "does everything hold under as much load as the clients can make";
this asks "does memory stay flat under steady load". The rate is fixed (paced clients,
not as fast as possible) so a slope in MB/min means the same thing on a busy machine as
on a quiet one. The traffic is ``bench.load``'s mix (allowed, blocked, masked, held and
decided by a scripted reviewer), so recording, masking and holds all run.

Every ``--sample-seconds`` it reads the gateway's RSS from /proc and DuckDB's own view of
its memory (``duckdb_memory()``, ``pragma_database_size()``) through the gateway's
analyst socket, and prints a line every minute. At the end it fits a least-squares line
to the RSS samples after the warm-up (``--warmup-minutes``, default 2) and reports the
slope in MB/min, RSS at 5 minutes and at the end, and whether every flow was recorded
exactly once. Targets (issue 17): slope <= 0.2 MB/min over 30 minutes, RSS at 30 minutes
<= 1.1x RSS at 5 minutes. Not a CI test: it takes as long as you ask.

Bounded: at most 120 minutes and 2,000 req/s; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.load import MIX, Rig, Tally, recording_problems, send_one
from bench.procs import usage
from recordings import control

MAX_MINUTES = 120.0
MAX_RATE = 2000.0
#: Held requests are the slow ones (they wait for the reviewer); fewer than bench.load.
SOAK_MIX = tuple((kind, 5 if kind == "held" else weight) for kind, weight in MIX)


def paced_client(number: int, clients: int, rate: float, proxy: str, upstream: str,
                 deadline: float, tally: Tally) -> None:
    """Sends rate/clients requests per second; a late client does not burst to catch up."""
    rng = random.Random(number)
    kinds, weights = zip(*SOAK_MIX, strict=True)
    interval = clients / rate
    next_at = time.monotonic() + rng.random() * interval
    with requests.Session() as http:
        http.trust_env = False
        http.proxies = {"http": proxy}
        n = 0
        while True:
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            if time.monotonic() >= deadline:
                return
            next_at = max(next_at + interval, time.monotonic() - interval)
            n += 1
            send_one(http, upstream, number, n, rng.choices(kinds, weights)[0],
                     rng.choice(("approve", "reject")), tally)


def duckdb_view(db: Path) -> dict[str, Any]:
    """DuckDB's own accounting, asked through the running gateway's analyst socket."""
    sock = control.socket_path(db)
    try:
        memory = control.call(sock, "/query", {
            "sql": "SELECT tag, memory_usage_bytes, temporary_storage_bytes FROM duckdb_memory() "
                   "WHERE memory_usage_bytes > 0 OR temporary_storage_bytes > 0"}, timeout=30)
        size = control.call(sock, "/query", {
            "sql": "SELECT memory_usage, memory_limit, wal_size, total_blocks FROM pragma_database_size()"},
            timeout=30)
    except (OSError, control.NotRunning, control.RequestFailed, ValueError) as exc:
        return {"error": str(exc)}
    tags = {row[0]: row[1] for row in memory["rows"]}
    usage_row = dict(zip(size["columns"], size["rows"][0], strict=True)) if size["rows"] else {}
    return {"duckdb_mb": round(sum(tags.values()) / 2**20, 1), "tags_mb": {
        tag: round(value / 2**20, 1) for tag, value in tags.items()}, **usage_row}


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return None
    xs = [at / 60 for at, _ in samples]
    ys = [mb for _, mb in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if not var:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def rss_at(samples: list[tuple[float, float]], seconds: float) -> float | None:
    """The RSS sample closest to ``seconds`` into the run."""
    if not samples:
        return None
    return min(samples, key=lambda s: abs(s[0] - seconds))[1]


def run(minutes: float, rate: float, clients: int, warmup_minutes: float, sample_seconds: float,
        workdir: Path, trace: bool, extra: list[str], env: dict[str, str] | None = None,
        record: bool = True, log=print) -> dict[str, Any]:
    seconds = minutes * 60
    environment = dict(env or {})
    if trace:
        environment.update({"PYTHONTRACEMALLOC": "1", control.TRACEMALLOC_ENV: "1"})
    samples: list[tuple[float, float]] = []
    minutes_log: list[dict[str, Any]] = []
    with Rig("soak", workdir, extra, environment, record) as rig:
        db, tally = rig.db, rig.tally
        started = time.monotonic()
        deadline = started + seconds
        threads = rig.clients(paced_client, [(clients, rate)] * clients, deadline)
        next_minute = 60.0
        while True:
            at = time.monotonic() - started
            samples.append((at, usage(rig.pid).rss / 2**20))
            if at >= next_minute or at >= seconds:
                done = sum(tally.outcomes.values())
                line = {"minute": round(at / 60, 1), "rss_mb": round(samples[-1][1], 1),
                        "requests": done, "req_per_s": round(done / at, 1),
                        **(duckdb_view(db) if record else {})}
                if trace:
                    line["python_growth"] = _tracemalloc_top(db)
                minutes_log.append(line)
                log(json.dumps(line))
                next_minute += 60
            if at >= seconds:
                break
            time.sleep(min(sample_seconds, max(0.05, seconds - at)))
        stuck = rig.finish(threads)
        elapsed = time.monotonic() - started
        final = usage(rig.pid)
    recording = rig.verify()
    warm = [(at, mb) for at, mb in samples if at >= warmup_minutes * 60]
    slope = slope_mb_per_min(warm)
    at5, last = rss_at(samples, 300), samples[-1][1]
    problems = list(tally.unexpected)
    if stuck:
        problems.append(f"{stuck} clients did not finish")
    problems += recording_problems(recording)
    done = sum(tally.outcomes.values())
    return {
        "minutes": round(elapsed / 60, 2), "target_rate": rate, "clients": clients,
        "requests": done, "requests_per_s": round(done / elapsed, 1),
        "outcomes": dict(tally.outcomes), "reviewer": dict(rig.decided), "recording": recording,
        "rss_mb_start": round(samples[0][1], 1), "rss_mb_at_5_min": round(at5, 1) if at5 else None,
        "rss_mb_end": round(last, 1), "peak_rss_mb": round(final.peak_rss / 2**20, 1),
        "slope_mb_per_min_after_warmup": round(slope, 3) if slope is not None else None,
        "end_over_5_min": round(last / at5, 3) if at5 and elapsed >= 300 else None,
        "per_minute": minutes_log, "problems": problems, "ok": not problems,
    }


def _tracemalloc_top(db: Path) -> Any:
    try:
        return control.call(control.socket_path(db), "/debug/tracemalloc", timeout=60).get("top")
    except (OSError, control.NotRunning, control.RequestFailed, ValueError) as exc:
        return str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (all clients)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace Python allocations in the gateway (slower) and print the top growth")
    parser.add_argument("--gateway-arg", action="append", default=[],
                        help="extra `portcullis run` argument (repeatable), e.g. --gateway-arg=--db-memory-limit=1GB")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the gateway (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--no-recording", action="store_true",
                        help="run the gateway with recording off (to tell the recorder's share of memory)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES or not 0 < args.rate <= MAX_RATE or not 0 < args.clients <= 200:
        parser.error(f"--minutes in (0, {MAX_MINUTES:g}], --rate in (0, {MAX_RATE:g}], --clients in (0, 200]")
    with tempfile.TemporaryDirectory(prefix="portcullis-soak-") as directory:
        result = run(args.minutes, args.rate, args.clients, args.warmup_minutes, args.sample_seconds,
                     Path(directory), args.tracemalloc, args.gateway_arg,
                     dict(item.split("=", 1) for item in args.gateway_env), not args.no_recording)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
