"""Rule-evaluation micro-benchmark: the policy's cost per request vs the number of rules.

Runs in-process on ``addons.policy.engine`` (no proxy, no network): it compiles generated rules
files with 10 to 10,000 rules and times ``Policy.evaluate`` for an allowed ``GET`` and a
blocked one, in both layouts of bench/rulegen.py. Also reports the compile (load) time,
which is what a hot reload costs.

:func:`canonical_checks` times the request guard (addons/guards/requestguard.py: the
canonical-request checks that run on every request before any rule); the target is
at most 20 µs per small request.
"""

from __future__ import annotations

import json
import time

import addons.schema  # noqa: F401  (registers every package's rules keys)
from addons.core.flowstate import FlowStates
from addons.core.synthetic import make_flow
from addons.guards.requestguard import RequestGuardAddon
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy
from bench import rulegen

HOST = "127.0.0.1"
REQUESTS = {
    "allowed GET /small": ("GET", f"http://{HOST}:8000/small"),
    "blocked GET /admin/users": ("GET", f"http://{HOST}:8000/admin/users"),
}


def measure(count: int, layout: str, budget_s: float = 0.25) -> dict:
    started = time.perf_counter()
    policy = compile_policy(json.dumps(rulegen.policy(HOST, count, layout)), f"<{count} rules>")
    compile_s = time.perf_counter() - started
    result = {"rules": count, "layout": layout, "compile_ms": round(compile_s * 1000, 1)}
    for label, (method, url) in REQUESTS.items():
        flow = make_flow(method, url)

        def evaluate(flow=flow) -> None:
            # A fresh view per request, as the policy addon builds one per flow.
            policy.evaluate(RequestView(flow))

        best = min(_per_call(evaluate, budget_s / 3) for _ in range(3))
        result[label] = round(best * 1e6, 2)  # microseconds per evaluation
        view = RequestView(flow)
        result[f"{label} rules evaluated"] = len(policy.index.candidates(view.host, view.method, view.path))
    return result


def _per_call(function, budget_s: float) -> float:
    """Seconds per call, calling `function` for about budget_s (at least 5 times)."""
    calls = 0
    started = time.perf_counter()
    while calls < 5 or time.perf_counter() - started < budget_s:
        function()
        calls += 1
    return (time.perf_counter() - started) / calls


def run(quick: bool = False) -> list[dict]:
    """Same-host rules at each size; the spread layout (which the host index handles
    alone) at 1,000 only. Compiling 10,000 rules takes seconds, so --quick skips it."""
    counts = (10, 1000) if quick else (10, 100, 1000, 10000)
    return [measure(count, "same-host") for count in counts] + [measure(1000, "spread")]


#: Small requests as agents send them: (method, url, headers, body).
GUARD_REQUESTS = {
    "GET, 6 headers": ("GET", f"http://{HOST}:8000/v1/customers?limit=10&page=2", {
        "User-Agent": "python-requests/2.32", "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate", "Authorization": "Bearer " + "x" * 40,
        "X-Request-Id": "5f0c6f4e-1111-2222-3333-444455556666"}, b""),
    "POST form, 6 headers": ("POST", f"http://{HOST}:8000/v1/payments", {
        "User-Agent": "python-requests/2.32", "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer " + "x" * 40,
        "X-Request-Id": "5f0c6f4e-1111-2222-3333-444455556666"}, b"amount=25&to=acct-42&memo=rent"),
}


def canonical_checks(budget_s: float = 0.3) -> dict[str, float]:
    """µs per request for the guard's requestheaders + request hooks on clean requests."""
    guard = RequestGuardAddon(FlowStates())
    result = {}
    for label, (method, url, headers, body) in GUARD_REQUESTS.items():
        flow = make_flow(method, url, headers=headers, body=body)

        def check(flow=flow) -> None:
            guard.requestheaders(flow)
            guard.request(flow)

        check()
        assert flow.response is None, "the benchmark request was refused"
        result[label] = round(min(_per_call(check, budget_s / 3) for _ in range(3)) * 1e6, 2)
    return result


def table(results: list[dict]) -> str:
    labels = list(REQUESTS)
    head = "| layout | rules | compile ms | " + " | ".join(f"{lbl} µs (rules evaluated)" for lbl in labels) + " |"
    lines = [head, "|" + "---|" * (3 + len(labels))]
    for r in results:
        cells = [f"{r[lbl]:.1f} ({r[f'{lbl} rules evaluated']})" for lbl in labels]
        lines.append(f"| {r['layout']} | {r['rules']:,} | {r['compile_ms']:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(run()))
    print("\ncanonical-request checks (µs per request, target <= 20):", canonical_checks())
