"""Streaming responses: time to first byte and per-event cost, direct vs bare mitmdump vs
the gateway on an unmasked and on a masked route (issue 14).

Upstream: the fake LLM APIs of tests/support/fake_llm.py in a process of its own
(chunked SSE, one chunk per event, Nagle off). Clients: http.client on one kept-alive connection per
target, reading the body incrementally (``read1``), so the first byte is timed when it
arrives, not when the body ends. The gateway is a real ``portcullis run`` (recording off).

Scenarios, each timed on every target in one run:

* ``ttfb``: 20 events 10 ms apart -- time to the first body byte (a gateway that buffered
  would answer after ~200 ms) and to the end;
* ``events``: 500 events of ~150 bytes back to back -- (total - direct total) / 500 is
  the per-event overhead;
* ``deltas``: an OpenAI chat stream of 500 one-word deltas -- the masked route runs the
  detectors over the text across deltas (ssn, e-mail: 256 characters held back).

Targets: direct, mitmdump (bare, no addons: buffers every body), mitmdump-stream (bare,
``stream_large_bodies=1``: streams every body), gateway /open/ (no mask: streams through),
gateway /masked/ (``$..ssn`` + ``detect: [ssn, email]``: masked event by event).

Run: ``python -m bench.streaming [--quick]``; writes bench/results/streaming.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import PROJECT_ROOT, gateway_process, mitmdump_process

RESULTS = Path(__file__).resolve().parent / "results" / "streaming.json"
RULES = """\
version: 1
default: allow
rules:
  - name: mask-stream
    match: {path: "/masked/**"}
    mask:
      - "$..ssn"
      - {detect: [ssn, email]}
"""
SCENARIOS = {
    # name: (method, path, events, delay between events in s)
    "ttfb": ("GET", "/sse?events=20&size=150&delay=0.01", 20, 0.010),
    "events": ("GET", "/sse?events=500&size=150", 500, 0.0),
    "deltas": ("POST", "/v1/chat/completions", 500, 0.0),
}
WORDS = ["The", " customer", " asked", " about", " the", " refund", " for", " order", " 4711", "."]


def fetch(connection: http.client.HTTPConnection, method: str, target: str) -> tuple[float, float, int]:
    """(seconds to the first body byte, seconds to the end, body bytes) of one request."""
    body = json.dumps({"model": "m", "stream": True}).encode() if method == "POST" else None
    headers = {"Content-Type": "application/json"} if body else {}
    started = time.perf_counter()
    connection.request(method, target, body=body, headers=headers)
    response = connection.getresponse()
    first = response.read1(65536)
    first_at = time.perf_counter()
    rest = response.read()
    ended = time.perf_counter()
    if response.status != 200 or not first:
        raise RuntimeError(f"{target}: {response.status} {(first + rest)[:200]!r}")
    return first_at - started, ended - started, len(first) + len(rest)


def measure(targets: dict[str, tuple[int | None, str]], upstream: int, repeats: int) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for scenario, (method, path, events, _) in SCENARIOS.items():
        connections = {name: http.client.HTTPConnection("127.0.0.1", port or upstream, timeout=60)
                       for name, (port, _) in targets.items()}
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in targets}
        for name, (port, prefix) in targets.items():  # warm up: connections, TLS-free paths, caches
            fetch(connections[name], method, _target(port, upstream, prefix + path))
        for _ in range(repeats):  # interleaved, so a noisy moment hits every target alike
            for name, (port, prefix) in targets.items():
                samples[name].append(fetch(connections[name], method, _target(port, upstream, prefix + path)))
        for connection in connections.values():
            connection.close()
        direct_ttfb = statistics.median(s[0] for s in samples["direct"])
        direct_total = statistics.median(s[1] for s in samples["direct"])
        rows = {}
        for name, values in samples.items():
            ttfb = statistics.median(s[0] for s in values)
            total = statistics.median(s[1] for s in values)
            rows[name] = {
                "ttfb_ms": round(ttfb * 1000, 3), "total_ms": round(total * 1000, 3),
                "ttfb_delta_ms": round((ttfb - direct_ttfb) * 1000, 3),
                "ttfb_ratio": round(ttfb / direct_ttfb, 2),
                "per_event_us": round((total - direct_total) / events * 1e6, 1),
                "bytes": values[-1][2],
            }
        results[scenario] = rows
    return results


def _target(port: int | None, upstream: int, path: str) -> str:
    """Origin-form for the direct connection, absolute-form through a proxy."""
    return path if port is None else f"http://127.0.0.1:{upstream}{path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else 25
    words = [WORDS[i % len(WORDS)] for i in range(SCENARIOS["deltas"][2])]
    llm = subprocess.Popen([sys.executable, "-m", "tests.support.fake_llm", *words], cwd=PROJECT_ROOT,
                           stdout=subprocess.PIPE, text=True)
    assert llm.stdout is not None
    upstream = int(llm.stdout.readline())
    with tempfile.TemporaryDirectory() as scratch:
        rules = Path(scratch) / "rules.yaml"
        rules.write_text(RULES)
        confdir = Path(scratch) / "conf"
        gateway = gateway_process("streaming-gateway", Path(scratch), rules, confdir, "--db", "", "--ui", "off")
        bare = mitmdump_process("streaming-mitmdump", Path(scratch), confdir)
        # Bare mitmproxy buffers every body; streaming all of them is its own best case.
        streaming = mitmdump_process("streaming-mitmdump-s", Path(scratch), confdir, "--set",
                                     "stream_large_bodies=1")
        gateway.start()
        bare.start()
        streaming.start()
        try:
            targets: dict[str, tuple[int | None, str]] = {
                "direct": (None, ""), "mitmdump": (bare.port, ""), "mitmdump-stream": (streaming.port, ""),
                "gateway-unmasked": (gateway.port, "/open"), "gateway-masked": (gateway.port, "/masked"),
            }
            report = measure(targets, upstream, repeats)
        finally:
            gateway.stop()
            bare.stop()
            streaming.stop()
            llm.terminate()
            llm.wait(10)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for scenario, rows in report.items():
        method, path, events, delay = SCENARIOS[scenario]
        print(f"{scenario}: {events} events{f' {delay * 1000:g} ms apart' if delay else ''} ({method} {path})")
        for name, row in rows.items():
            print(f"  {name:>17}: first byte {row['ttfb_ms']:8.3f} ms ({row['ttfb_delta_ms']:+7.3f} ms, "
                  f"x{row['ttfb_ratio']:<5}) end {row['total_ms']:8.3f} ms  per event {row['per_event_us']:+7.1f} µs")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
