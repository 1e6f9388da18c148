"""Per-request CPU, split: bare mitmdump vs the gateway, recording on vs off, in one run.

    python -m bench.cpusplit                      # 3 x 3,000 requests per proxy, 16 clients
    python -m bench.cpusplit --requests 2000 --repetitions 2 --profile out.collapsed

Why CPU and not req/s: on a shared machine throughput moves with everyone else's load,
while the CPU a process spends per request barely does. Each proxy gets the same bounded
number of requests (not a time window), interleaved A B C D, D C B A, ..., and its CPU
time (user + system, from /proc) is read before and after:

    bare      mitmdump -q, no addons
    gw-off    `portcullis run` with bench/workers.py's policy (10 rules, one mask on the
              measured route), recording off (--db '')
    gw-rec    the same, recording into a DuckDB file (the default recording process)

For gw-rec the gateway process's own CPU (the data path: the event loop, the feed's
sender thread) is reported apart from the recording process's (its child, recordings/
sink.py). ``recording on data path`` = gw-rec's gateway process - gw-off's: the issue-18
budget is <= 0.1 ms. ``--profile FILE`` also samples gw-rec with py-spy for one extra
batch and prints the hottest frames (bench/profile.py's summary).

``--lake`` adds gw-lake (recording into a local DuckLake, SQLite catalog) and, where
PostgreSQL's binaries are (tests/support/postgres.py finds them), gw-lake-pg (catalog in a
PostgreSQL started here, data files in a directory), with the PostgreSQL server's CPU
per request (``pg_ms``: the postmaster, its live backends and the ones that exited).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import loadgen, procs, rulegen
from bench.workers import (
    REQUESTS,
    UPSTREAM_HOST,
    Postgres,
    _children,
    lake_catalog,
    policy,
    sample_problem,
)
from gateway.agent_env import ensure_ca


def _cpu(pid: int) -> tuple[float, float]:
    """(this process's CPU seconds, its children's) -- children: the recording process."""
    own = procs.usage(pid).cpu
    theirs = 0.0
    for child in _children(pid):
        try:
            theirs += procs.usage(child).cpu
        except OSError:
            pass
    return own, theirs


def _server_cpu(postmaster: int | None) -> float:
    """A PostgreSQL server's CPU seconds: the postmaster with its reaped children (backends
    that exited) and its live backends."""
    if postmaster is None:
        return 0.0
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total = sum(int(value) for value in fields[11:15]) / procs.CLOCK_TICKS  # utime stime cutime cstime
    for child in _children(postmaster):
        try:
            total += procs.usage(child).cpu
        except OSError:
            pass
    return total


async def batch(target: loadgen.Target, pid: int | None, clients: int, count: int,
                postmaster: int | None = None) -> dict[str, float]:
    before = _cpu(pid) if pid else (0.0, 0.0)
    before_pg = _server_cpu(postmaster)
    result = await loadgen.run_count(target, REQUESTS, clients, count, timeout=300)
    if postmaster is not None:
        await asyncio.sleep(0.5)  # the recording's last batch reaches the catalog
    after = _cpu(pid) if pid else (0.0, 0.0)
    n = result.completed or 1
    return {"own_ms": (after[0] - before[0]) * 1000 / n, "child_ms": (after[1] - before[1]) * 1000 / n,
            "pg_ms": (_server_cpu(postmaster) - before_pg) * 1000 / n,
            "rps": result.completed / result.duration if result.duration else 0.0,
            "bad": sum(v for k, v in result.statuses.items() if k != 200)}


async def run(workdir: Path, clients: int, count: int, repetitions: int, profile: Path | None,
              log=print, variants: dict[str, dict[str, str]] | None = None, lake: bool = False) -> dict[str, Any]:
    confdir = workdir / "conf"
    ensure_ca(confdir)
    rules = rulegen.write(workdir / "rules.yaml", policy())
    upstream = procs.upstream_process(workdir)
    proxies: dict[str, procs.Process] = {}
    postgres = Postgres(workdir / "pg") if lake else None
    postmaster: int | None = None
    try:
        upstream.start()
        proxies["bare"] = procs.mitmdump_process("bare", workdir, confdir).start()
        proxies["gw-off"] = procs.gateway_process("gw-off", workdir, rules, confdir, "--ui", "off",
                                                  "--db", "").start(timeout=120)
        proxies["gw-rec"] = procs.gateway_process("gw-rec", workdir, rules, confdir, "--ui", "off", "--db",
                                                  str(workdir / "rec.duckdb")).start(timeout=120)
        for name, env in (variants or {}).items():  # A/B: gw-rec with other environment variables
            process = procs.gateway_process(name, workdir, rules, confdir, "--ui", "off", "--db",
                                            str(workdir / f"{name}.duckdb"))
            process.env = env
            proxies[name] = process.start(timeout=120)
        if lake:
            proxies["gw-lake"] = procs.gateway_process(
                "gw-lake", workdir, rules, confdir, "--ui", "off", "--db", str(workdir / "lake.duckdb"),
                "--lake", str(workdir / "lake")).start(timeout=120)
            assert postgres is not None
            if dsn := postgres.start():
                postmaster = int((postgres.server.data / "postmaster.pid").read_text().split()[0])
                proxies["gw-lake-pg"] = procs.gateway_process(
                    "gw-lake-pg", workdir, rules, confdir, "--ui", "off", "--db", str(workdir / "lake-pg.duckdb"),
                    "--lake", lake_catalog(dsn, "cpusplit"), "--lake-data", str(workdir / "lake-pg")).start(timeout=120)
        for name, process in proxies.items():
            if name != "bare" and (problem := await sample_problem(upstream.port, process.port)):
                raise RuntimeError(f"{name}: {problem}")
        targets = {name: loadgen.Target(UPSTREAM_HOST, upstream.port, proxy=("127.0.0.1", p.port))
                   for name, p in proxies.items()}
        for name in proxies:  # warm up: imports, caches, the recording's first batches
            await batch(targets[name], None, clients, min(500, count))
        cells: dict[str, list[dict[str, float]]] = {name: [] for name in proxies}
        for rep in range(repetitions):
            order = list(proxies) if rep % 2 == 0 else list(reversed(proxies))
            for name in order:
                cells[name].append(await batch(targets[name], proxies[name].pid, clients, count,
                                               postmaster if name == "gw-lake-pg" else None))
            log(f"  repetition {rep + 1}/{repetitions}: " + ", ".join(
                f"{n} {cells[n][-1]['own_ms']:.3f}" for n in proxies) + " ms/request")
        profiled = None
        if profile is not None:
            profiled = await _profile(targets["gw-rec"], proxies["gw-rec"].pid, clients, count, profile)
    finally:
        for process in proxies.values():
            process.stop()
        upstream.stop()
        if postgres is not None:
            postgres.stop()
    med = {name: {key: round(statistics.median(c[key] for c in cs), 4) for key in cs[0]}
           for name, cs in cells.items()}
    split = {
        "bare_ms": med["bare"]["own_ms"],
        "gateway_recording_off_ms": med["gw-off"]["own_ms"],
        "gateway_recording_on_ms": med["gw-rec"]["own_ms"],
        "recording_process_ms": med["gw-rec"]["child_ms"],
        "recording_on_data_path_ms": round(med["gw-rec"]["own_ms"] - med["gw-off"]["own_ms"], 4),
        "gateway_over_bare_cpu": round(med["gw-rec"]["own_ms"] / med["bare"]["own_ms"], 3),
        "bare_over_gateway_cpu": round(med["bare"]["own_ms"] / med["gw-rec"]["own_ms"], 3),
    }
    return {"clients": clients, "requests_per_batch": count, "repetitions": repetitions,
            "median": med, "split": split, "cells": cells, "profile": profiled,
            "problems": [f"{n}: {c['bad']} non-200" for n, cs in cells.items() for c in cs if c["bad"]]}


async def _profile(target: loadgen.Target, pid: int, clients: int, count: int, out: Path) -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(out),
                            "--nonblocking", "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await loadgen.run_count(target, REQUESTS, clients, count * 2, timeout=300)
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
        spy.wait(30)
    from bench.profile import summarize

    return summarize(out, top=40) if out.exists() else "py-spy wrote nothing"


def table(result: dict[str, Any]) -> str:
    s = result["split"]
    rows = [("bare mitmdump", s["bare_ms"]), ("gateway, recording off", s["gateway_recording_off_ms"]),
            ("gateway, recording on (gateway process)", s["gateway_recording_on_ms"]),
            ("  recording process (child)", s["recording_process_ms"]),
            ("recording on the data path (on - off)", s["recording_on_data_path_ms"])]
    lines = [f"{result['repetitions']} x {result['requests_per_batch']} requests, {result['clients']} clients; "
             "CPU ms per request (median):"]
    lines += [f"  {label:<42} {value:7.3f}" for label, value in rows]
    lines.append(f"  gateway / bare CPU: {s['gateway_over_bare_cpu']:.2f}x "
                 f"(bare / gateway = {s['bare_over_gateway_cpu']:.2f}, the req/s ratio if CPU-bound)")
    for name in result["median"]:
        if name not in ("bare", "gw-off", "gw-rec"):
            m = result["median"][name]
            server = f", PostgreSQL {m['pg_ms']:.3f}" if name == "gw-lake-pg" else ""
            lines.append(f"  variant {name:<34} {m['own_ms']:7.3f} (recording process {m['child_ms']:.3f}{server}; "
                         f"on - off {m['own_ms'] - result['median']['gw-off']['own_ms']:.3f})")
    lines.append("  req/s (median, shared machine): " + ", ".join(
        f"{n} {m['rps']:.0f}" for n, m in result["median"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpusplit", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000, help="requests per proxy per repetition")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="py-spy the recording gateway into this file too")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE[,VAR=VALUE]",
                        help="one more recording gateway, with these environment variables (A/B runs)")
    parser.add_argument("--lake", action="store_true",
                        help="also record into a local lake and a PostgreSQL-catalog lake (gw-lake, gw-lake-pg)")
    args = parser.parse_args(argv)
    variants = {}
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        variants[name] = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
    with tempfile.TemporaryDirectory(prefix="portcullis-cpusplit-") as directory:
        result = asyncio.run(run(Path(directory), args.clients, args.requests, args.repetitions, args.profile,
                                 variants=variants, lake=args.lake))
    print(table(result))
    if result["profile"]:
        print(result["profile"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    for problem in result["problems"]:
        print("problem:", problem)
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
