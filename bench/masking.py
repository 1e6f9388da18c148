"""Masking cost for 1 KiB, 100 KiB and 5 MiB JSON responses with 5 masks.

Two measurements, both medians:

* in-process: the masking step alone (decode, parse, 5 masks, serialise, set the body)
  as the masking addon runs it on a mitmproxy Response, in CPU time;
* end to end: a real gateway (``portcullis run``, recording off) fetching the same body
  from a local upstream on a masked route and on an unmasked route, so the difference
  is what masking adds to what an agent waits for. Throughput is body size / median time.

Run: ``python -m bench.masking [--quick]``; writes bench/results/masking.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from mitmproxy import http

import addons.schema  # noqa: F401  (registers every package's rules keys)
from addons.core.flowstate import FlowStates
from addons.masking.addon import MaskingAddon
from addons.masking.redaction import Tally
from addons.policy.engine import compile_policy
from bench.procs import gateway_process

SIZES = {"1 KiB": 1024, "100 KiB": 100 * 1024, "5 MiB": 5 * 1024 * 1024}
RESULTS = Path(__file__).resolve().parent / "results" / "masking.json"

RULES = """\
version: 1
default: allow
rules:
  - name: mask-customer-pii
    match: {path: "/masked/**"}
    mask:
      - "$..ssn"
      - {path: "$..card_number", keep_last: 4}
      - {path: "$..email", with: hash}
      - {path: "$.items[*].notes", detect: [email, phone]}
      - {detect: [secret]}
"""


def document_of_size(size: int) -> bytes:
    """Customer records (every record has values for all 5 masks) up to ``size`` bytes."""
    items: list[dict] = []
    length = len('{"items": []}')
    while length < size:
        i = len(items)
        items.append({
            "id": i, "name": f"Customer Nº{i}", "email": f"customer{i}@example.com",
            "ssn": f"123-45-{i % 9000 + 1000}", "card_number": "4242424242424242",
            "notes": f"call +1 415 555 {i % 9000 + 1000:04d} or write to c{i}@example.org",
            "balance": round(i * 1.37, 2), "tags": ["a", "b"],
        })
        length += len(json.dumps(items[-1])) + 2
    return json.dumps({"items": items}).encode()


def _median_ms(function: Callable[[], object], repeats: int, budget_s: float,
               clock: Callable[[], float] = time.perf_counter) -> float:
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < budget_s):
        t0 = clock()
        function()
        times.append(clock() - t0)
    return statistics.median(times) * 1000


def in_process(body: bytes, repeats: int, budget_s: float) -> dict[str, float]:
    rule = compile_policy(RULES, "<bench>").rules[0]
    plan = [(rule, rule.extensions["mask"])]
    addon = MaskingAddon(FlowStates())
    addon.pseudonyms._key = b"bench-key-" * 4

    def mask() -> None:
        response = http.Response.make(200, body, {"Content-Type": "application/json"})
        addon._mask_body(response, plan, {}, keep_encoding=False)

    tallies: dict[str, Tally] = {}
    response = http.Response.make(200, body, {"Content-Type": "application/json"})
    addon._mask_body(response, plan, tallies, keep_encoding=False)
    masked = sum(t.count for t in tallies.values())
    # CPU time of this process: the masking step is pure computation, and CPU time keeps
    # the figure meaningful on a machine busy with other work.
    median = _median_ms(mask, repeats, budget_s, clock=time.process_time)
    return {"values_masked": masked, "mask_ms": round(median, 3),
            "mask_MBps": round(len(body) / 1e6 / (median / 1000), 1)}


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the
    # proxy's delayed ACK (~40 ms) and small responses measure that instead of masking.
    disable_nagle_algorithm = True
    bodies: dict[str, bytes] = {}

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        body = self.bodies[self.path.rsplit("/", 1)[-1]]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def end_to_end(bodies: dict[str, bytes], repeats: dict[str, int], budget_s: float) -> dict[str, dict]:
    _Upstream.bodies = {label.replace(" ", ""): body for label, body in bodies.items()}
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        rules = Path(scratch) / "rules.yaml"
        rules.write_text(RULES)
        gateway = gateway_process("masking-gateway", Path(scratch), rules, Path(scratch) / "conf",
                                  "--db", "", "--ui", "off")
        gateway.env = {"PORTCULLIS_MASK_KEY": "bench-key"}
        gateway.start()
        try:
            session = requests.Session()
            session.trust_env = False
            session.proxies = {"http": f"http://127.0.0.1:{gateway.port}"}
            base = f"http://127.0.0.1:{upstream.server_address[1]}"
            for label, body in bodies.items():
                name = label.replace(" ", "")
                row = {}
                for route in ("plain", "masked"):
                    def fetch(route: str = route, name: str = name) -> None:
                        answer = session.get(f"{base}/{route}/{name}", timeout=60)
                        assert answer.status_code == 200, answer.text[:200]
                    fetch()  # warm up the connection
                    cpu_before, calls = gateway.usage().cpu, 0

                    def counted(fetch: Callable[[], None] = fetch) -> None:
                        nonlocal calls
                        calls += 1
                        fetch()

                    median = _median_ms(counted, repeats[label], budget_s)
                    # The gateway's own CPU per request: unlike wall time, not inflated
                    # when other processes compete for the cores.
                    row[f"{route}_cpu_ms"] = round((gateway.usage().cpu - cpu_before) / calls * 1000, 2)
                    row[f"{route}_ms"] = round(median, 3)
                    row[f"{route}_MBps"] = round(len(body) / 1e6 / (median / 1000), 2)
                row["added_ms"] = round(row["masked_ms"] - row["plain_ms"], 3)
                row["throughput_ratio"] = round(row["plain_ms"] / row["masked_ms"], 3)
                results[label] = row
        finally:
            gateway.stop()
            upstream.shutdown()
            upstream.server_close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.masking", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    repeats = {label: max(3, int(n * scale)) for label, n in {"1 KiB": 500, "100 KiB": 60, "5 MiB": 9}.items()}
    bodies = {label: document_of_size(size) for label, size in SIZES.items()}
    report: dict[str, dict] = {"in_process": {}, "end_to_end": {}}
    for label, body in bodies.items():
        report["in_process"][label] = {"bytes": len(body), **in_process(body, repeats[label], 20 * scale)}
    report["end_to_end"] = end_to_end(bodies, repeats, 30 * scale)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("masking step alone (in-process, median CPU time):")
    for label, row in report["in_process"].items():
        print(f"  {label:>8}: {row['mask_ms']:9.3f} ms  {row['mask_MBps']:7.1f} MB/s")
    print("through the gateway (median per request; masked vs unmasked route):")
    for label, row in report["end_to_end"].items():
        print(f"  {label:>8}: unmasked {row['plain_ms']:9.3f} ms ({row['plain_MBps']:6.1f} MB/s, "
              f"gateway CPU {row['plain_cpu_ms']} ms)  masked {row['masked_ms']:9.3f} ms "
              f"({row['masked_MBps']:6.1f} MB/s, gateway CPU {row['masked_cpu_ms']} ms)  "
              f"added {row['added_ms']:8.3f} ms  throughput x{row['throughput_ratio']}")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
