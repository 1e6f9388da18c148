"""Workers: one gateway against bare mitmdump, and N workers against one, in one run.

    python -m bench.workers                       # 16 clients; 1 and 2 workers (and up to the cores)
    python -m bench.workers --quick               # shorter windows, 2 repetitions
    python -m bench.workers --workers 1,2,4 --clients 16 64 --json out.json

Every gateway runs the same policy: the ten rules of bench/rulegen.base_rules, one mask on
the measured route (``$.name`` of ``GET /small``, so the masking engine parses and
rewrites every response), and recording. Measured in one run, interleaved (each
repetition visits every scenario, forward then backward, so drift hits all alike):

    direct        the load generator straight to the upstream (its ceiling)
    bare          mitmdump -q, no addons
    gw1           `portcullis run`, 1 worker, recording into an embedded DuckDB file
    gw1-lake      1 worker recording into a DuckLake (catalog in PostgreSQL when there is
                  one, data files in a directory), the baseline of:
    gwN-lake      `portcullis run --workers N` for each N, with shared state (a real
                  PostgreSQL started here, --state) and the same kind of lake (--lake);
                  without --lake in this build: recording off, against gw1-off

Targets (issue 18): gw1 >= 0.85x bare req/s at 16 clients; gw2 >= 1.5x gw1 (same
recording) on a 2-core machine, the load generator and the upstream on the same cores.
The load generator is one asyncio process (bench/loadgen.py); the upstream is
bench/upstream.py. Without PostgreSQL binaries (or when this build has no --state) the
N-worker scenarios run through the supervisor directly, without the shared-state check,
and the result says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen, procs, rulegen
from bench.loadgen import Request
from gateway.agent_env import ensure_ca
from gateway.workers import available_cores

UPSTREAM_HOST = "127.0.0.1"
REQUESTS = (Request("GET", "/small"),)
#: `portcullis run` without the shared-state check (gateway/workers.py's supervisor as is).
LAUNCHER = (
    "import asyncio, sys\n"
    "from gateway import settings, workers\n"
    "from gateway.cli import build_parser\n"
    "args = build_parser().parse_args(sys.argv[1:])\n"
    "sys.exit(asyncio.run(workers.Supervisor(args.listen, settings.mitmproxy_options(args), args.quiet,"
    " args.workers).run()))\n"
)


def policy() -> dict[str, Any]:
    """Ten rules and one mask that applies to every measured response."""
    document = rulegen.policy(UPSTREAM_HOST, 10)
    document["rules"].insert(0, {"name": "mask-name", "match": {"host": UPSTREAM_HOST, "path": "/small"},
                                 "mask": ["$.name"]})
    return document


def flags() -> set[str]:
    from gateway.settings import SETTINGS

    return {s.flag for s in SETTINGS}


@dataclass
class Proxy:
    name: str
    label: str
    workers: int
    process: procs.Process
    pids: list[int]


class WorkerProcess(procs.Process):
    """A gateway whose CPU is its supervisor's and all its workers' (children of the supervisor)."""

    def start(self, timeout: float = 60) -> WorkerProcess:
        """Started once every worker listens (the supervisor's banner), not when the first does."""
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while "Portcullis gateway ready" not in self.output():
            if not self.alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name}: not every worker started; its output:\n{self.output()}")
            time.sleep(0.05)
        return self

    def usage(self) -> procs.Usage:
        own = procs.usage(self.pid)
        cpu, rss, peak = own.cpu, own.rss, own.peak_rss
        for child in _children(self.pid):
            try:
                theirs = procs.usage(child)
            except OSError:
                continue
            cpu, rss, peak = cpu + theirs.cpu, rss + theirs.rss, peak + theirs.peak_rss
        return procs.Usage(cpu, rss, peak)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: any of its threads may have forked them)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # after the ")" of comm: state, then ppid
            found.append(int(entry))
    return found


class Postgres:
    """A real PostgreSQL for the shared state (tests/support/postgres.py's server), if any."""

    def __init__(self, root: Path) -> None:
        from tests.support.postgres import PostgresServer, find_bindir

        bindir = find_bindir()
        self.server = PostgresServer(bindir, root) if bindir else None

    def start(self) -> str | None:
        if self.server is None:
            return None
        if os.geteuid() == 0:  # the postgres user must reach its directory
            for parent in [self.server.root, *self.server.root.parents]:
                if parent == Path("/"):
                    break
                parent.mkdir(parents=True, exist_ok=True)
                os.chmod(parent, os.stat(parent).st_mode | 0o711)
        self.server.init().start()
        return self.server.new_database("bench")

    def stop(self) -> None:
        if self.server is not None and self.server.is_running():
            self.server.stop("immediate")


def lake_catalog(dsn: str, name: str) -> str:
    """A new, empty database on the shared state's server for one gateway's lake catalog."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    database = f"lake_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def gateway(name: str, workdir: Path, rules: Path, confdir: Path, workers: int, args: list[str],
            direct_supervisor: bool) -> procs.Process:
    process = procs.gateway_process(name, workdir, rules, confdir, "--ui", "off", *args)
    if workers > 1:
        process.command += ["--workers", str(workers)]
        if direct_supervisor:
            process.command[1:3] = ["-c", LAUNCHER]  # python -c LAUNCHER run --listen ...
        process = WorkerProcess(process.name, process.command, process.port, workdir)
    return process


def plan(counts: list[int], have_state: bool, shared: tuple[str, ...]) -> list[tuple[str, str, int, str]]:
    """(name, label, workers, recording) per gateway; recording is db, lake or off.
    ``shared``: the recordings the N-worker gateways are measured with (each also with 1)."""
    many = [n for n in counts if n > 1]
    plans = [("gw1", "1 worker, recording to DuckDB", 1, "db")] if 1 in counts else []
    for recording in shared:
        if many and 1 in counts:
            plans.append((f"gw1-{recording}", f"1 worker, recording {recording}", 1, recording))
        plans += [(f"gw{n}-{recording}", f"{n} workers, recording {recording}"
                   f"{'' if have_state else ', no shared state'}", n, recording) for n in many]
    return plans


async def sample_problem(upstream_port: int, proxy_port: int) -> str | None:
    """What is wrong with one request through a gateway (not masked, not 200), or None."""
    target = loadgen.Target(UPSTREAM_HOST, upstream_port, proxy=("127.0.0.1", proxy_port))
    result = await loadgen.run_count(target, REQUESTS, 1, 1, timeout=30, keep_bodies=True)
    status, body = next(iter(result.statuses)), result.bodies[0]
    if status != 200 or json.loads(body).get("name") != "[masked]":
        return f"sample request: {status} {body[:200]!r} (expected 200 with $.name masked)"
    return None


async def measure(target: loadgen.Target, clients: int, duration: float, warmup: float,
                  process: procs.Process | None) -> dict[str, Any]:
    marks: dict[str, float] = {}
    result = await loadgen.run_window(
        target, REQUESTS, clients, duration, warmup,
        on_start=lambda: marks.__setitem__("start", process.usage().cpu if process else 0.0),
        on_stop=lambda: marks.__setitem__("stop", process.usage().cpu if process else 0.0))
    return {"rps": result.rps, "p50": result.percentile(50), "p99": result.percentile(99),
            "requests": result.requests, "errors": dict(result.errors), "statuses": dict(result.statuses),
            "cpu_ms_per_request": (marks["stop"] - marks["start"]) / result.requests * 1000
            if result.requests else None}


async def run(counts: list[int], clients: list[int], duration: float, warmup: float, repetitions: int,
              workdir: Path, recordings: tuple[str, ...] = ("lake",), state: str | None = None,
              log=print) -> dict[str, Any]:
    available = flags()
    have_state, have_lake = "--state" in available, "--lake" in available
    shared = tuple(r for r in recordings if r == "off" or have_lake) or ("off",)
    confdir = workdir / "conf"
    ensure_ca(confdir)
    rules = rulegen.write(workdir / "rules.yaml", policy())
    upstream = procs.upstream_process(workdir)
    postgres = Postgres(workdir / "postgres") if have_state and not state and any(n > 1 for n in counts) else None
    proxies: dict[str, procs.Process] = {}
    notes: list[str] = []
    try:
        upstream.start()
        dsn = state or (postgres.start() if postgres else None)
        if any(n > 1 for n in counts) and not dsn:
            notes.append("N-worker gateways ran without shared state (this build has no --state, or no "
                         "PostgreSQL binaries): the supervisor was started directly; no holds are measured")
        proxies["bare"] = procs.mitmdump_process("bare", workdir, confdir).start()
        for name, _label, workers, recording in plan(counts, bool(dsn), shared):
            args = ["--db", str(workdir / f"{name}.duckdb")] if recording != "off" else ["--db", ""]
            if recording == "lake":  # one lake per gateway; its catalog in PostgreSQL when there is one
                if dsn:
                    args += ["--lake", lake_catalog(dsn, name), "--lake-data", str(workdir / f"{name}-lake")]
                else:
                    args += ["--lake", str(workdir / f"{name}-lake")]
            if dsn and workers > 1:
                args += ["--state", dsn]
            started = time.monotonic()
            proxies[name] = gateway(name, workdir, rules, confdir, workers, args, not dsn).start(timeout=120)
            log(f"  started {name} ({time.monotonic() - started:.1f} s)")
        for name, process in proxies.items():  # each gateway really masks (and answers)
            if name != "bare" and (problem := await sample_problem(upstream.port, process.port)):
                notes.append(f"{name}: {problem}")
        labels = {"direct": "direct to the upstream", "bare": "bare mitmdump",
                  **{name: f"Portcullis, {label}" for name, label, _, _ in plan(counts, bool(dsn), shared)}}
        windows = [(name, n) for name in labels for n in clients]
        cells: dict[tuple[str, int], list[dict[str, Any]]] = {w: [] for w in windows}
        for rep in range(repetitions):
            order = windows if rep % 2 == 0 else list(reversed(windows))
            log(f"  repetition {rep + 1}/{repetitions}")
            for name, n in order:
                proxy = proxies.get(name)
                target = loadgen.Target(UPSTREAM_HOST, upstream.port,
                                        proxy=None if proxy is None else ("127.0.0.1", proxy.port))
                cells[(name, n)].append(await measure(target, n, duration, warmup, proxy or upstream))
        for name, process in proxies.items():
            if not process.alive():
                notes.append(f"{name} exited during the run: {process.output()[-300:]}")
    finally:
        for process in proxies.values():
            process.stop()
        upstream.stop()
        if postgres:
            postgres.stop()
    return summarize(labels, cells, clients, notes, {"state": have_state, "lake": have_lake})


def summarize(labels: dict[str, str], cells: dict[tuple[str, int], list[dict[str, Any]]], clients: list[int],
              notes: list[str], features: dict[str, bool]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for (name, n), windows in cells.items():
        cpu = [w["cpu_ms_per_request"] for w in windows if w["cpu_ms_per_request"] is not None]
        table.setdefault(name, {"label": labels[name], "clients": {}})["clients"][str(n)] = {
            "rps": round(statistics.median(w["rps"] for w in windows), 1),
            # The best window: on a machine shared with other work, the closest to capacity.
            "best_rps": round(max(w["rps"] for w in windows), 1),
            "p50_ms": round(statistics.median(w["p50"] for w in windows), 2),
            "p99_ms": round(statistics.median(w["p99"] for w in windows), 2),
            "cpu_ms_per_request": round(statistics.median(cpu), 3) if cpu else None,
            "repetitions": [round(w["rps"], 1) for w in windows],
            "errors": _sum(w["errors"] for w in windows),
            "statuses": _sum(w["statuses"] for w in windows),
        }
    ratios: dict[str, dict[str, float | None]] = {}
    for n in map(str, clients):
        def rps(name: str, n: str = n, key: str = "rps") -> float | None:
            return table.get(name, {}).get("clients", {}).get(n, {}).get(key)

        row: dict[str, float | None] = {}
        if rps("gw1") and rps("bare"):
            row["gw1_over_bare"] = round(rps("gw1") / rps("bare"), 3)
            row["gw1_over_bare_best"] = round(rps("gw1", key="best_rps") / rps("bare", key="best_rps"), 3)
        for name in table:
            if name.startswith("gw") and name != "gw1" and not name.startswith("gw1-"):
                base = "gw1-" + name.split("-", 1)[1]
                base = base if base in table else "gw1"
                if rps(name) and rps(base):
                    row[f"{name}_over_{base}"] = round(rps(name) / rps(base), 3)
                    row[f"{name}_over_{base}_best"] = round(rps(name, key="best_rps") / rps(base, key="best_rps"), 3)
        ratios[n] = row
    problems = [f"{name} {n} clients: {c['errors']}" for name, entry in table.items()
                for n, c in entry["clients"].items() if c["errors"]]
    problems += [f"{name} {n} clients: statuses {c['statuses']}" for name, entry in table.items()
                 for n, c in entry["clients"].items() if set(c["statuses"]) - {"200"}]
    return {"cores": available_cores(), "features": features, "scenarios": table, "ratios": ratios,
            "targets": {"gw1_over_bare_at_16": 0.85, "gw2_over_gw1_at_16": 1.5},
            "notes": notes, "problems": problems, "ok": not problems}


def _sum(dicts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[str(k)] = total.get(str(k), 0) + v
    return total


def markdown(result: dict[str, Any]) -> str:
    """The scaling table: req/s per scenario and client count, and the ratios."""
    clients = sorted({int(n) for entry in result["scenarios"].values() for n in entry["clients"]})
    lines = [f"| scenario | {' | '.join(f'{n} clients req/s (best)' for n in clients)} | CPU ms/request (16) |",
             "| --- |" + " ---: |" * (len(clients) + 1)]
    for name, entry in result["scenarios"].items():
        cells = [f"{entry['clients'][str(n)]['rps']:,.0f} ({entry['clients'][str(n)]['best_rps']:,.0f})"
                 if str(n) in entry["clients"] else "" for n in clients]
        cpu = entry["clients"].get("16", {}).get("cpu_ms_per_request")
        lines.append(f"| {name}: {entry['label']} | {' | '.join(cells)} | {cpu if cpu is not None else ''} |")
    for n, row in result["ratios"].items():
        lines.append(f"\n{n} clients: " + ", ".join(f"{k} = {v:.2f}x" for k, v in row.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default=None,
                        help="comma-separated worker counts (default: 1,2 and every power of two up to the cores)")
    parser.add_argument("--clients", nargs="+", type=int, default=[16])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--recording", nargs="+", choices=("lake", "off"), default=["lake"],
                        help="how the N-worker gateways (and their 1-worker baselines) record")
    parser.add_argument("--state", help="a PostgreSQL URL to use for the shared state (default: start one)")
    parser.add_argument("--priority", action="store_true",
                        help="on a machine shared with other work (Linux, root): give this session's "
                             "scheduler group (/proc/self/autogroup) nice -20 for the run, as docs/deploy.md did")
    parser.add_argument("--quick", action="store_true", help="2 s windows, 2 repetitions")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.workers:
        counts = sorted({int(n) for n in args.workers.split(",")})
    else:
        counts, n = [1, 2], 4
        while n <= available_cores():
            counts.append(n)
            n *= 2
    if args.quick:
        args.duration, args.repetitions = 2.0, 2
    if args.priority:
        # Linux groups each session's processes for scheduling, so plain nice does not lift a
        # benchmark above other sessions' work; the group's own nice does (root only).
        Path("/proc/self/autogroup").write_text("-20")
    with tempfile.TemporaryDirectory(prefix="portcullis-workers-") as directory:
        result = asyncio.run(run(counts, args.clients, args.duration, args.warmup, args.repetitions,
                                 Path(directory), tuple(args.recording), args.state))
    print(markdown(result))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
