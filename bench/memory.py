"""Memory flatness: the gateway's RSS after N flows vs after 10x N flows, in one process.

A gateway that keeps something per flow (a dict that is never pruned, a growing queue)
shows up here as RSS growing with history. Uses the recording gateway when recording is
available (it is the configuration most likely to accumulate), else the 10-rule one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.macro import Environment
from bench.scenarios import PROXIES, SMALL, Scenario, features

CLIENTS = 16


async def run(workdir: Path, flows: tuple[int, int] = (10_000, 100_000),
              log: Callable[[str], None] = print, proxy: str | None = None) -> dict[str, Any]:
    """RSS after flows[0] flows, then at three more even steps up to flows[1]: a plateau
    (caches filling) and a steady climb (something kept per flow) look different."""
    name = proxy or ("p10-rec" if features()["recording"] else "p10")
    spec = next(p for p in PROXIES if p.name == name)
    env = Environment(workdir, [spec])
    scenario = Scenario("memory", spec.label, spec.name)
    samples: list[dict[str, Any]] = []
    try:
        env.start(log)
        target = env.target(scenario)
        process = env.proxies[name]
        sent = 0
        started = time.monotonic()
        low, high = flows
        for goal in [low + (high - low) * step // 3 for step in range(4)]:
            result = await loadgen.run_count(target, SMALL, CLIENTS, goal - sent, timeout=900)
            sent = goal
            failures = sum(v for k, v in result.statuses.items() if k != 200)
            usage = process.usage()
            samples.append({"flows": goal, "rss_mb": round(usage.rss / 2**20, 1),
                            "peak_rss_mb": round(usage.peak_rss / 2**20, 1),
                            "non_200": failures, "elapsed_s": round(time.monotonic() - started, 1)})
            log(f"  {goal:,} flows: RSS {samples[-1]['rss_mb']} MB")
    finally:
        env.stop()
    first, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    return {"proxy": spec.label, "clients": CLIENTS, "samples": samples,
            "growth": round(last / first - 1, 3) if first else None}
