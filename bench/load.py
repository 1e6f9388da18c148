"""Load and soak: many agents at once, mixed traffic, every flow recorded exactly once.

    python -m bench.load                   # 200 clients for 60 s
    python -m bench.load --quick           # 50 clients for 15 s
    python -m bench.load --minutes 30      # the soak
    python -m bench.load --clients 100 --seconds 120 --json out.json

Starts a real gateway (recording on, review UI on), the benchmark upstream
(``bench.upstream``, a subprocess) and a scripted reviewer that decides holds through the
JSON API. Each client loops over a mix until the time is up:

    allowed  GET /small                  -> 200, decision allowed
    blocked  DELETE /v1/tables/<n>       -> 403 blocked_by_policy, never forwarded
    masked   GET /json1k                 -> 200, X-Portcullis-Masked > 0, no SSN in the body
    held     POST /slow?decide=approve|reject  (waits for the reviewer)
                                         -> 200 approved, or 403 rejected, as the reviewer chose

It fails (exit 1) on any unexpected answer or client error, if the recording does not
hold every flow the clients saw exactly once (and nothing else), or if the gateway's
memory grows by more than --max-growth-mb between the end of the first fifth of the run
and its end. Everything listens on 127.0.0.1; every loop is bounded by time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import requests

from bench.procs import free_port, gateway_process, upstream_process, usage
from review_ui.reviewers import add_reviewer

RULES = """\
version: 1
default: allow
hold_timeout: 60s
# All clients are one (anonymous) identity: up to 200 of them may be held at once.
max_pending_holds_per_identity: 1000
rules:
  - name: no-table-deletes
    match: {method: DELETE, path: "/v1/tables/**"}
    action: block
  - name: mask-pii
    match: {path: /json1k}
    mask: ["$..ssn", {path: "$..card", keep_last: 4}]
  - name: hold-slow-posts
    match: {method: POST, path: /slow}
    action: hold
    reason: load test hold
"""
MIX = (("allowed", 50), ("blocked", 20), ("masked", 20), ("held", 10))
SSN_PREFIX = "078-05-"


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    flow_ids: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def add(self, kind: str, flow_id: str | None, seconds: float, problem: str | None) -> None:
        with self.lock:
            self.outcomes[kind if problem is None else f"{kind}:unexpected"] += 1
            if flow_id:
                self.flow_ids.append(flow_id)
            if problem is not None and len(self.unexpected) < 50:
                self.unexpected.append(f"{kind}: {problem}")
            self.latencies.setdefault(kind, []).append(seconds)


def check(kind: str, response: requests.Response, decide: str) -> str | None:
    """What is wrong with this answer, or None."""
    decision = response.headers.get("X-Portcullis-Decision")
    expected = {
        "allowed": (200, "allowed"), "masked": (200, "allowed"), "blocked": (403, "blocked"),
        "held": (200, "approved") if decide == "approve" else (403, "rejected"),
    }[kind]
    if (response.status_code, decision) != expected:
        return f"expected {expected}, got {(response.status_code, decision)}: {response.text[:200]}"
    if kind == "masked" and (SSN_PREFIX in response.text or int(response.headers.get("X-Portcullis-Masked", 0)) < 1):
        return "an SSN was not masked"
    return None


def client(number: int, proxy: str, upstream: str, deadline: float, tally: Tally) -> None:
    rng = random.Random(number)
    kinds, weights = zip(*MIX, strict=True)
    with requests.Session() as http:
        http.trust_env = False
        http.proxies = {"http": proxy}
        n = 0
        while time.monotonic() < deadline:
            n += 1
            send_one(http, upstream, number, n, rng.choices(kinds, weights)[0],
                     rng.choice(("approve", "reject")), tally)


def send_one(http: requests.Session, upstream: str, number: int, n: int, kind: str,
             decide: str, tally: Tally) -> None:
    """Send one request of ``kind`` (allowed, blocked, masked, held) and tally its answer;
    shared by the load run and the soak (bench/soak.py)."""
    started = time.monotonic()
    try:
        if kind == "allowed":
            response = http.get(f"{upstream}/small?c={number}&n={n}", timeout=30)
        elif kind == "blocked":
            response = http.delete(f"{upstream}/v1/tables/t{n}", timeout=30)
        elif kind == "masked":
            response = http.get(f"{upstream}/json1k?c={number}&n={n}", timeout=30)
        else:
            response = http.post(f"{upstream}/slow?decide={decide}&c={number}&n={n}",
                                 json={"amount": n}, timeout=90)
    except requests.RequestException as exc:
        tally.add(kind, None, time.monotonic() - started, f"client error: {exc}")
        return
    tally.add(kind, response.headers.get("X-Portcullis-Flow-Id"), time.monotonic() - started,
              check(kind, response, decide))


def reviewer(ui: str, token: str, stop: threading.Event, decided: Counter) -> None:
    """Decides every pending hold as its URL asks, through the JSON API."""
    with requests.Session() as http:
        http.trust_env = False
        http.headers["Authorization"] = f"Bearer {token}"
        while not stop.is_set():
            try:
                pending = http.get(f"{ui}/api/pending", timeout=10).json()["pending"]
                for hold in pending:
                    action = "approve" if "decide=approve" in hold["url"] else "reject"
                    answer = http.post(f"{ui}/api/flows/{hold['flow_id']}/{action}",
                                       json={"comment": "load test"}, timeout=10)
                    decided[f"{action}:{answer.status_code}"] += 1
            except (requests.RequestException, ValueError, KeyError):
                decided["reviewer_error"] += 1
            stop.wait(0.05)


def verify_recording(db: Path, seen: list[str]) -> dict[str, Any]:
    with duckdb.connect(str(db), read_only=True) as con:
        total = con.execute("SELECT count(*) FROM flows").fetchone()[0]
        duplicates = con.execute("SELECT count(*) FROM (SELECT id FROM flows GROUP BY id HAVING count(*) > 1)").fetchone()[0]
        con.execute("CREATE TEMP TABLE seen (id VARCHAR)")
        con.executemany("INSERT INTO seen VALUES (?)", [(i,) for i in seen])
        missing = con.execute("SELECT count(*) FROM seen WHERE id NOT IN (SELECT id FROM flows)").fetchone()[0]
        decisions = dict(con.execute("SELECT decision, count(*) FROM flows GROUP BY ALL").fetchall())
    return {"rows": total, "seen_by_clients": len(seen), "distinct_seen": len(set(seen)),
            "missing": missing, "duplicate_ids": duplicates, "decisions": decisions}


class Rig:
    """What a load or a soak run stands on, set up in one place: the gateway (recording
    into ``<name>.duckdb`` unless ``record`` is off, review UI on), the benchmark upstream
    (a subprocess) and the scripted reviewer thread deciding holds through the JSON API.

    Use as a context manager; ``clients(target, args)`` starts one client thread per
    argument tuple (each called as ``target(number, *args, proxy, upstream, deadline,
    tally)``), ``finish(threads)`` waits for them and stops the reviewer.
    """

    def __init__(self, name: str, workdir: Path, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, record: bool = True) -> None:
        self.workdir = workdir
        self.db = workdir / f"{name}.duckdb"
        self.record = record
        rules = workdir / "rules.yaml"
        rules.write_text(RULES)
        reviewers = workdir / "reviewers.yaml"
        _, self.token = add_reviewer(reviewers, f"{name}-reviewer", [], f"{name}-reviewer-password")
        ui_port = free_port()
        self.ui = f"http://127.0.0.1:{ui_port}"
        self.upstream = upstream_process(workdir)
        self.gateway = gateway_process("portcullis", workdir, rules, workdir / "conf",
                                       "--db", str(self.db) if record else "", "--ui", f"127.0.0.1:{ui_port}",
                                       "--reviewers", str(reviewers), *(extra or []))
        self.gateway.env = dict(env or {})
        self.tally, self.decided, self.stop = Tally(), Counter(), threading.Event()
        self._review: threading.Thread | None = None

    def __enter__(self) -> Rig:
        try:
            self.upstream.start()
            self.gateway.start()
        except BaseException:
            self.__exit__()
            raise
        self._review = threading.Thread(target=reviewer, args=(self.ui, self.token, self.stop, self.decided),
                                        daemon=True)
        self._review.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.gateway.stop()
        self.upstream.stop()

    @property
    def pid(self) -> int:
        return self.gateway.pid

    def clients(self, target: Any, per_client: list[tuple[Any, ...]], deadline: float) -> list[threading.Thread]:
        proxy, upstream = f"http://127.0.0.1:{self.gateway.port}", f"http://127.0.0.1:{self.upstream.port}"
        threads = [threading.Thread(target=target, daemon=True,
                                    args=(i, *args, proxy, upstream, deadline, self.tally))
                   for i, args in enumerate(per_client)]
        for thread in threads:
            thread.start()
        return threads

    def finish(self, threads: list[threading.Thread], timeout: float = 120) -> int:
        """Wait for the clients (a held request may still wait for its decision), stop the
        reviewer; the number of clients that did not finish."""
        for thread in threads:
            thread.join(timeout)
        self.stop.set()
        if self._review is not None:
            self._review.join(15)
        return sum(thread.is_alive() for thread in threads)

    def verify(self) -> dict[str, Any]:
        return verify_recording(self.db, self.tally.flow_ids) if self.record else {"off": True}


def recording_problems(recording: dict[str, Any]) -> list[str]:
    """Not every flow the clients saw is in the recording exactly once (and nothing else)."""
    if recording.get("off"):
        return []
    if recording["missing"] or recording["duplicate_ids"] or recording["rows"] != recording["distinct_seen"] \
            or recording["distinct_seen"] != recording["seen_by_clients"]:
        return [f"recording mismatch: {recording}"]
    return []


def run(clients: int, seconds: float, max_growth_mb: float, workdir: Path) -> dict[str, Any]:
    memory: list[tuple[float, int]] = []
    with Rig("load", workdir) as rig:
        started = time.monotonic()
        deadline = started + seconds
        threads = rig.clients(client, [()] * clients, deadline)
        while time.monotonic() < deadline:
            memory.append((round(time.monotonic() - started, 1), usage(rig.pid).rss))
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        stuck = rig.finish(threads)
        elapsed = time.monotonic() - started
        memory.append((round(elapsed, 1), usage(rig.pid).rss))
        final_usage = usage(rig.pid)
    tally = rig.tally
    recording = rig.verify()
    warm = [rss for at, rss in memory if at >= seconds / 5] or [memory[-1][1]]
    growth_mb = (memory[-1][1] - warm[0]) / 2**20
    requests_done = sum(tally.outcomes.values())
    problems = list(tally.unexpected)
    if stuck:
        problems.append(f"{stuck} clients did not finish")
    problems += recording_problems(recording)
    if growth_mb > max_growth_mb:
        problems.append(f"gateway memory grew by {growth_mb:.0f} MiB (limit {max_growth_mb:.0f})")
    return {
        "clients": clients, "seconds": round(elapsed, 1), "requests": requests_done,
        "requests_per_s": round(requests_done / elapsed, 1), "outcomes": dict(tally.outcomes),
        "reviewer": dict(rig.decided), "recording": recording,
        "latency_ms_p50": {k: round(1000 * sorted(v)[len(v) // 2], 1) for k, v in tally.latencies.items()},
        "latency_ms_p99": {k: round(1000 * sorted(v)[int(len(v) * 0.99)], 1) for k, v in tally.latencies.items()},
        "gateway_rss_mb": [(at, round(rss / 2**20, 1)) for at, rss in memory],
        "gateway_peak_rss_mb": round(final_usage.peak_rss / 2**20, 1),
        "gateway_cpu_s": round(final_usage.cpu, 1),
        "memory_growth_mb": round(growth_mb, 1), "problems": problems, "ok": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--minutes", type=float, help="soak: run this many minutes (overrides --seconds)")
    parser.add_argument("--quick", action="store_true", help="50 clients for 15 s")
    parser.add_argument("--max-growth-mb", type=float, default=150.0,
                        help="allowed gateway RSS growth after the first fifth of the run")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    clients, seconds = (50, 15.0) if args.quick else (args.clients, args.seconds)
    if args.minutes:
        seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="portcullis-load-") as directory:
        result = run(clients, seconds, args.max_growth_mb, Path(directory))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
