"""Approval latency and the cost of held requests for everyone else.

    python -m bench.approvals [--rounds 30] [--clicks 10] [--seconds 5] [--held 100]

Starts a real gateway (subprocess, recording on, review UI on) and a threaded upstream
in this process, then measures:

1. **approve -> upstream**: time from a reviewer's approval (API ``POST .../approve``, and
   a real button click in headless Chromium when available) until the upstream receives
   the held request. Target: median < 50 ms.
2. **throughput of other agents**: requests/s of concurrent agents doing allowed GETs,
   first with nothing held, then while ``--held`` requests wait for a reviewer.
   Target: no more than 10% lower.

Everything listens on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from gateway.settings import PROJECT_ROOT
from review_ui.reviewers import add_reviewer
from tests.support.gateway import free_port

RULES = """
version: 1
default: allow
hold_timeout: 10m
rules:
  - name: bench-hold
    match: {path: "/held/**"}
    action: hold
    reason: benchmark hold
"""


class Upstream(ThreadingHTTPServer):
    """Answers every request with a small JSON body and notes when each path arrived,
    by ``clock`` (bench/cluster.py compares wall-clock times with PostgreSQL's)."""

    daemon_threads = True

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.clock = clock
        self.arrivals: dict[str, float] = {}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def log_message(self, *args) -> None:  # noqa: D401 - quiet
        pass

    def _serve(self) -> None:
        self.server.arrivals[self.path] = self.server.clock()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _serve


class Gateway:
    def __init__(self, workdir: Path) -> None:
        self.port, self.ui_port = free_port(), free_port()
        rules = workdir / "rules.yaml"
        rules.write_text(RULES)
        reviewers = workdir / "reviewers.yaml"
        _, self.token = add_reviewer(reviewers, "bench", [], "bench-password-123")
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--quiet", "--listen", f"127.0.0.1:{self.port}",
             "--rules", str(rules), "--confdir", str(workdir / "conf"), "--db", str(workdir / "rec.duckdb"),
             "--ui", f"127.0.0.1:{self.ui_port}", "--reviewers", str(reviewers)],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Portcullis gateway ready" in line:
                break
            if time.monotonic() > deadline:
                raise SystemExit("gateway did not start")
        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()
        self.ui = f"http://127.0.0.1:{self.ui_port}"
        self.proxies = {"http": f"http://127.0.0.1:{self.port}"}
        self.api = requests.Session()
        self.api.trust_env = False
        self.api.headers["Authorization"] = f"Bearer {self.token}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def pending(self) -> list[dict]:
        return self.api.get(self.ui + "/api/pending", timeout=10).json()["pending"]

    def wait_held(self, suffix: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for hold in self.pending():
                if hold["url"].endswith(suffix):
                    return hold["flow_id"]
            time.sleep(0.01)
        raise RuntimeError(f"no hold for {suffix}")


def agent_call(gateway: Gateway, url: str, method: str = "POST", timeout: float = 60) -> int:
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, url, proxies=gateway.proxies, json={"x": 1}, timeout=timeout).status_code


def summary(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 2), "max_ms": round(ms[-1], 2)}


def measure_api_latency(gateway: Gateway, upstream: Upstream, rounds: int) -> list[float]:
    samples = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(rounds):
            path = f"/held/api-{i}"
            url = f"http://127.0.0.1:{upstream.server_address[1]}{path}"
            call = pool.submit(agent_call, gateway, url)
            flow_id = gateway.wait_held(path)
            start = time.perf_counter()
            gateway.api.post(f"{gateway.ui}/api/flows/{flow_id}/approve", json={"comment": "bench"}, timeout=10)
            call.result(timeout=30)
            samples.append(upstream.arrivals[path] - start)
    return samples


def measure_click_latency(gateway: Gateway, upstream: Upstream, rounds: int) -> list[float] | None:
    chromium = "/usr/bin/chromium"
    if rounds <= 0 or not os.path.exists(chromium):
        return None
    from playwright.sync_api import sync_playwright

    from tests.support.browser import CHROMIUM_ARGS

    samples = []
    with sync_playwright() as playwright, ThreadPoolExecutor(max_workers=2) as pool:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context().new_page()
        page.goto(gateway.ui + "/login")
        page.fill("input[name=name]", "bench")
        page.fill("input[name=password]", "bench-password-123")
        page.click("button[type=submit]")
        page.wait_for_selector("h1")
        for i in range(rounds):
            path = f"/held/click-{i}"
            url = f"http://127.0.0.1:{upstream.server_address[1]}{path}"
            call = pool.submit(agent_call, gateway, url)
            flow_id = gateway.wait_held(path)
            page.goto(f"{gateway.ui}/flows/{flow_id}")
            page.wait_for_selector("#approve")
            # The "a" shortcut opens the desk's confirm step (a shortcut never decides
            # alone); the reviewer's decision is the confirm, so the clock starts there.
            page.keyboard.press("a")
            page.wait_for_selector("#confirm-yes", state="visible")
            start = time.perf_counter()
            # Enter on the focused Confirm button: Playwright's click() spends tens of ms
            # on actionability checks before it clicks, which would be measured as ours.
            page.keyboard.press("Enter")
            call.result(timeout=30)
            samples.append(upstream.arrivals[path] - start)
            page.wait_for_selector("#flow-status.s-approved")  # let the page settle first
            page.wait_for_load_state()
        browser.close()
    return samples


def throughput(gateway: Gateway, upstream: Upstream, seconds: float, workers: int = 8) -> float:
    url = f"http://127.0.0.1:{upstream.server_address[1]}/free"
    stop_at = time.monotonic() + seconds
    counts = [0] * workers

    def worker(index: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            while time.monotonic() < stop_at:
                if session.get(url, proxies=gateway.proxies, timeout=10).status_code == 200:
                    counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return sum(counts) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="API approvals to time")
    parser.add_argument("--clicks", type=int, default=10, help="browser clicks to time (0: skip)")
    parser.add_argument("--seconds", type=float, default=5, help="length of each throughput run")
    parser.add_argument("--held", type=int, default=100, help="requests held during the loaded runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each throughput condition")
    args = parser.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        upstream = Upstream()
        gateway = Gateway(Path(tmp))
        try:
            results["approve_api_to_upstream"] = summary(measure_api_latency(gateway, upstream, args.rounds))
            clicks = measure_click_latency(gateway, upstream, args.clicks)
            if clicks:
                results["approve_click_to_upstream"] = summary(clicks)
            throughput(gateway, upstream, 1)  # warm-up
            # Alternate the two conditions (this machine is shared: load comes and goes).
            free, busy = [], []
            pool = ThreadPoolExecutor(max_workers=args.held)
            port = upstream.server_address[1]
            held: list = []
            for run in range(args.repeat):
                free.append(throughput(gateway, upstream, args.seconds))
                held += [pool.submit(agent_call, gateway, f"http://127.0.0.1:{port}/held/load-{run}-{i}",
                                     "POST", 600) for i in range(args.held)]
                deadline = time.monotonic() + 60
                while len(gateway.pending()) < args.held and time.monotonic() < deadline:
                    time.sleep(0.1)
                results["held_during_runs"] = len(gateway.pending())
                busy.append(throughput(gateway, upstream, args.seconds))
                for hold in gateway.pending():
                    gateway.api.post(f"{gateway.ui}/api/flows/{hold['flow_id']}/reject",
                                     json={"comment": "bench: load run over"}, timeout=10)  # a rejection needs one
            base, loaded = statistics.median(free), statistics.median(busy)
            results["throughput_rps"] = {
                "nothing_held": [round(x, 1) for x in free], f"{args.held}_held": [round(x, 1) for x in busy],
                "median_change_pct": round((loaded - base) / base * 100, 1),
            }
            for future in held:
                future.result(timeout=60)
            pool.shutdown()
        finally:
            gateway.stop()
            upstream.shutdown()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
