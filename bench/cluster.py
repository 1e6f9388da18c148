"""Two gateways on one PostgreSQL (``--state``): how fast a decision made on one reaches
the agent waiting on the other, how fast a dead gateway's holds close, how fast holds
work again after PostgreSQL restarts.

    python -m bench.cluster [--rounds 40] [--quick] [--json PATH]

Starts a real PostgreSQL server in a temporary directory (tests/support/postgres.py:
Debian's binaries, ``runuser -u postgres`` as root), two gateway processes A and B
(review UI on, recording on) and a threaded upstream, then measures:

1. **decision commit -> forward, across gateways**: an agent's call is held on A; a
   reviewer approves it through B's API; from the decision's time stamped inside B's
   transaction (the row's ``decided_at``, taken before the commit, so this errs long
   by the commit's duration) to the upstream receiving the request from A. Also from the start of B's
   ``POST .../approve``. Target: median <= 50 ms.
2. **failover**: a third gateway C holds a wait-mode request and is killed with SIGKILL;
   time until a survivor has closed the hold ``abandoned`` (``gateway_lost``). It is
   ``lost_after`` (5 s by default; ``PORTCULLIS_STATE_LOST_AFTER_S``) plus at most one
   sweep interval.
3. **recovery**: PostgreSQL is stopped and started again; time from the restart until a
   request that needs approval becomes a hold again (no gateway restarted).

Everything listens on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests

from bench.approvals import RULES, Upstream
from gateway.settings import PROJECT_ROOT
from review_ui.reviewers import add_reviewer
from tests.support.gateway import free_port
from tests.support.postgres import PostgresServer, find_bindir


class Gateway:
    def __init__(self, workdir: Path, name: str, dsn: str, token: str, env: dict[str, str] | None = None) -> None:
        self.name, self.token = name, token
        self.port, self.ui_port = free_port(), free_port()
        environment = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--quiet", "--listen", f"127.0.0.1:{self.port}",
             "--rules", str(workdir / "rules.yaml"), "--confdir", str(workdir / "conf"),
             "--db", str(workdir / f"rec-{name}.duckdb"), "--ui", f"127.0.0.1:{self.ui_port}",
             "--reviewers", str(workdir / "reviewers.yaml"), "--state", dsn],
            cwd=PROJECT_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        lines = []
        for line in self.process.stdout:
            lines.append(line)
            if "Portcullis gateway ready" in line:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"gateway {name} did not start:\n{''.join(lines)}")
        else:
            raise SystemExit(f"gateway {name} exited:\n{''.join(lines)}")
        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()
        self.ui = f"http://127.0.0.1:{self.ui_port}"
        self.proxies = {"http": f"http://127.0.0.1:{self.port}"}
        self.api = requests.Session()
        self.api.trust_env = False
        self.api.headers["Authorization"] = f"Bearer {token}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def pending(self) -> list[dict]:
        return self.api.get(self.ui + "/api/pending", timeout=10).json()["pending"]

    def wait_held(self, suffix: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                for hold in self.pending():
                    if hold["url"].endswith(suffix):
                        return hold["flow_id"]
            except requests.RequestException:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"{self.name}: no hold for {suffix}")

    def call(self, url: str, timeout: float = 60, **kwargs) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            return session.post(url, proxies=self.proxies, json={"x": 1}, timeout=timeout, **kwargs)


def summary(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 2), "max_ms": round(ms[-1], 2)}


def decided_at(dsn: str, flow_id: str) -> float:
    """When B's transaction decided the hold (stamped inside it, before its commit)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT decided_at FROM portcullis_holds WHERE id = %s", (flow_id,)).fetchone()
    assert row is not None
    return float(row[0])


def cross_gateway_latency(a: Gateway, b: Gateway, upstream: Upstream, dsn: str, rounds: int) -> tuple[list, list]:
    from_commit, from_click = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(rounds):
            path = f"/held/cross-{i}"
            call = pool.submit(a.call, upstream.url(path))
            flow_id = b.wait_held(path)  # B lists what A holds
            start = time.time()
            response = b.api.post(f"{b.ui}/api/flows/{flow_id}/approve", json={"comment": "bench"}, timeout=10)
            assert response.status_code == 200, response.text
            assert call.result(timeout=30).status_code == 200
            from_commit.append(upstream.arrivals[path] - decided_at(dsn, flow_id))
            from_click.append(upstream.arrivals[path] - start)
    return from_commit, from_click


def failover(workdir: Path, b: Gateway, upstream: Upstream, dsn: str, token: str) -> float:
    c = Gateway(workdir, "c", dsn, token)
    pool = ThreadPoolExecutor(max_workers=1)
    pool.submit(c.call, upstream.url("/held/failover"))
    flow_id = b.wait_held("/held/failover")
    c.stop(signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 60
    while time.monotonic() < deadline:
        flow = b.api.get(f"{b.ui}/api/flows/{flow_id}", timeout=10).json()
        if flow["status"] != "pending":
            assert (flow["status"], flow["detail"]) == ("abandoned", "gateway_lost"), flow
            pool.shutdown(wait=False)
            return time.monotonic() - killed
        time.sleep(0.02)
    raise RuntimeError("the killed gateway's hold was never closed")


def recovery(server: PostgresServer, a: Gateway, upstream: Upstream) -> dict:
    server.stop()
    stopped = time.monotonic()
    refused_after = None
    deadline = stopped + 30
    while time.monotonic() < deadline:
        response = a.call(upstream.url("/held/outage"), timeout=10)
        if response.status_code == 503 and response.json().get("error") == "shared_state_unavailable":
            refused_after = time.monotonic() - stopped
            break
        time.sleep(0.05)
    server.start()
    restarted = time.monotonic()
    deadline = restarted + 60
    n = 0
    while time.monotonic() < deadline:
        n += 1
        path = f"/held/recovered-{n}"
        response = a.call(upstream.url(path), timeout=10, headers={"X-Portcullis-Wait": "async"})
        if response.status_code == 202:
            break
        time.sleep(0.05)
    recovered_after = time.monotonic() - restarted
    return {"holds_refused_after_stop_s": round(refused_after, 2) if refused_after is not None else None,
            "holds_again_after_restart_s": round(recovered_after, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="cross-gateway approvals to time")
    parser.add_argument("--quick", action="store_true", help="15 rounds, no failover run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if find_bindir() is None:
        print("bench.cluster: no PostgreSQL server binaries (apt-get install postgresql)", file=sys.stderr)
        return 2
    rounds = 15 if args.quick else args.rounds
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "rules.yaml").write_text(RULES)
        _, token = add_reviewer(workdir / "reviewers.yaml", "bench", [], "bench-password-123")
        assert token is not None
        pg_root = Path(tempfile.mkdtemp(prefix="portcullis-bench-pg-"))
        server = PostgresServer(find_bindir(), pg_root).init().start()
        upstream = Upstream(clock=time.time)  # wall clock: compared with PostgreSQL's decided_at
        gateways: list[Gateway] = []
        try:
            dsn = server.new_database("bench")
            a = Gateway(workdir, "a", dsn, token)
            gateways.append(a)
            b = Gateway(workdir, "b", dsn, token)
            gateways.append(b)
            cross_gateway_latency(a, b, upstream, dsn, 3)  # warm-up
            from_commit, from_click = cross_gateway_latency(a, b, upstream, dsn, rounds)
            results["decision_commit_to_forward_across_gateways"] = summary(from_commit)
            results["approve_api_on_b_to_forward_from_a"] = summary(from_click)
            if not args.quick:
                results["failover_to_abandoned_s"] = round(failover(workdir, b, upstream, dsn, token), 2)
                results["failover_lost_after_s"] = float(os.environ.get("PORTCULLIS_STATE_LOST_AFTER_S", "5"))
            results["postgres_restart"] = recovery(server, a, upstream)
        finally:
            for gateway in gateways:
                gateway.stop()
            upstream.shutdown()
            server.stop("immediate")
            shutil.rmtree(pg_root, ignore_errors=True)
    crossed = results["decision_commit_to_forward_across_gateways"]
    print(f"cross-gateway decision commit -> forward: median {crossed['median_ms']} ms, "
          f"p95 {crossed['p95_ms']} ms over {crossed['n']} approvals (target: median <= 50 ms)")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
