"""The side-by-side run: direct, bare mitmdump and Portcullis scenarios, interleaved.

All proxies start once and stay up; each repetition measures every (scenario, clients)
window once, in forward order on even repetitions and reverse order on odd ones, so slow
drift of the machine (other processes, thermal) hits all scenarios alike. Figures are
medians over repetitions.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen, procs, rulegen
from bench.scenarios import (
    PORTCULLIS_BASE_ARGS,
    PROXIES,
    SCENARIOS,
    UPSTREAM_HOST,
    ProxySpec,
    Scenario,
    features,
)
from gateway.agent_env import ensure_ca
from tests.support.certs import make_pki


@dataclass
class Config:
    duration: float = 1.25
    warmup: float = 0.5
    repetitions: int = 3
    quick: bool = False
    only: tuple[str, ...] = ()  # scenario names; empty = all that apply
    clients: tuple[int, ...] = ()  # keep only these client counts; empty = each scenario's own


@dataclass
class Window:
    """One measured (scenario, clients) interval."""

    rps: float
    p50: float
    p90: float
    p99: float
    requests: int
    cpu_s: float  # proxy (or upstream, for direct) CPU seconds in the interval
    loadgen_cpu_s: float
    errors: dict[str, int]
    statuses: dict[int, int]

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / self.requests * 1000 if self.requests else float("nan")


@dataclass
class Cell:
    scenario: str
    clients: int
    windows: list[Window] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        values = [getattr(w, attribute) for w in self.windows]
        return statistics.median(values) if values else float("nan")

    def summary(self) -> dict[str, Any]:
        errors: dict[str, int] = {}
        statuses: dict[str, int] = {}
        for w in self.windows:
            for k, v in w.errors.items():
                errors[k] = errors.get(k, 0) + v
            for k, v in w.statuses.items():
                statuses[str(k)] = statuses.get(str(k), 0) + v
        return {
            "clients": self.clients,
            "rps": round(self.median("rps"), 1),
            "p50_ms": round(self.median("p50"), 3),
            "p90_ms": round(self.median("p90"), 3),
            "p99_ms": round(self.median("p99"), 3),
            "cpu_s_per_1k": round(self.median("cpu_per_1k"), 3),
            "loadgen_cpu_s_per_1k": round(
                statistics.median(w.loadgen_cpu_s / w.requests * 1000 for w in self.windows if w.requests), 3
            ) if any(w.requests for w in self.windows) else None,
            "requests": sum(w.requests for w in self.windows),
            "repetitions": [round(w.rps, 1) for w in self.windows],
            "errors": errors,
            "statuses": statuses,
        }


class Environment:
    """Upstreams and proxies for one run, in a scratch directory."""

    def __init__(self, workdir: Path, wanted: list[ProxySpec]) -> None:
        self.workdir = workdir
        self.confdir = workdir / "confdir"
        ensure_ca(self.confdir)
        self.pki = make_pki(workdir / "pki")
        self.upstream = procs.upstream_process(workdir)
        self.tls_upstream = procs.upstream_process(workdir, self.pki.server_cert, self.pki.server_key)
        self.proxies: dict[str, procs.Process] = {}
        self.wanted = wanted

    def start(self, log: Callable[[str], None]) -> None:
        self.upstream.start()
        self.tls_upstream.start()
        for spec in self.wanted:
            started = time.monotonic()
            self.proxies[spec.name] = self._proxy(spec).start()
            log(f"  started {spec.name}: {spec.label} ({time.monotonic() - started:.1f} s)")

    def _proxy(self, spec: ProxySpec) -> procs.Process:
        args = [a.replace("{dir}", str(self.workdir)) for a in spec.args]
        if spec.kind == "mitmdump":
            # Verify the HTTPS upstream like Portcullis does (its CA via the rules file).
            return procs.mitmdump_process(spec.name, self.workdir, self.confdir,
                                          "--set", f"ssl_verify_upstream_trusted_ca={self.pki.ca_cert}", *args)
        assert spec.rules is not None
        document = spec.rules()
        document["upstreams"] = [{"host": UPSTREAM_HOST, "ca_bundle": str(self.pki.ca_cert)}]
        rules = rulegen.write(self.workdir / f"{spec.name}.rules.yaml", document)
        return procs.gateway_process(spec.name, self.workdir, rules, self.confdir,
                                     *PORTCULLIS_BASE_ARGS, *args)

    def target(self, scenario: Scenario) -> loadgen.Target:
        upstream = self.tls_upstream if scenario.tls else self.upstream
        proxy = None if scenario.proxy is None else ("127.0.0.1", self.proxies[scenario.proxy].port)
        return loadgen.Target(UPSTREAM_HOST, upstream.port, tls=scenario.tls, proxy=proxy)

    def measured_process(self, scenario: Scenario) -> procs.Process:
        if scenario.proxy is None:
            return self.tls_upstream if scenario.tls else self.upstream
        return self.proxies[scenario.proxy]

    def stop(self) -> None:
        for process in [*self.proxies.values(), self.upstream, self.tls_upstream]:
            process.stop()


def plan(config: Config) -> tuple[list[ProxySpec], list[tuple[Scenario, int]], dict[str, str]]:
    """The proxies to start and the (scenario, clients) windows of one repetition;
    plus the scenarios skipped and why."""
    available = features()
    skipped: dict[str, str] = {}
    proxies = {p.name: p for p in PROXIES}
    usable: set[str] = set()
    for spec in PROXIES:
        if spec.requires and not available.get(spec.requires):
            skipped[spec.name] = f"{spec.requires} is not available in this checkout"
        else:
            usable.add(spec.name)
    windows: list[tuple[Scenario, int]] = []
    for scenario in SCENARIOS:
        if config.only and scenario.name not in config.only:
            continue
        if scenario.proxy is not None and scenario.proxy not in usable:
            skipped[scenario.name] = skipped[scenario.proxy]
            continue
        clients = scenario.quick_clients if config.quick and not config.only else scenario.clients
        if config.clients:
            clients = tuple(n for n in clients if n in config.clients)
        windows += [(scenario, n) for n in clients]
    needed = {s.proxy for s, _ in windows if s.proxy}
    return [proxies[name] for name in proxies if name in needed], windows, skipped


async def _sample_check(env: Environment, scenario: Scenario) -> str | None:
    if scenario.check is None:
        return None
    target = env.target(scenario)
    try:
        result = await loadgen.run_count(target, scenario.requests[:1], 1, 1, timeout=30, keep_bodies=True)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, loadgen.ProtocolError) as exc:
        return f"sample request failed: {exc!r}"
    status = next(iter(result.statuses))
    return scenario.check(status, result.bodies[0])


async def _measure(env: Environment, scenario: Scenario, clients: int, config: Config) -> Window:
    process = env.measured_process(scenario)
    marks: dict[str, float] = {}
    result = await loadgen.run_window(
        env.target(scenario), scenario.requests, clients, config.duration, config.warmup,
        on_start=lambda: marks.__setitem__("start", process.usage().cpu),
        on_stop=lambda: marks.__setitem__("stop", process.usage().cpu),
    )
    return Window(
        rps=result.rps, p50=result.percentile(50), p90=result.percentile(90), p99=result.percentile(99),
        requests=result.requests, cpu_s=marks["stop"] - marks["start"],
        loadgen_cpu_s=result.loadgen_cpu, errors=dict(result.errors), statuses=dict(result.statuses),
    )


async def run(config: Config, workdir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    proxies, windows, skipped = plan(config)
    env = Environment(workdir, proxies)
    cells: dict[tuple[str, int], Cell] = {(s.name, n): Cell(s.name, n) for s, n in windows}
    invalid: dict[str, str] = {}
    peak_rss: dict[str, int] = {}
    try:
        env.start(log)
        for scenario in {s.name: s for s, _ in windows}.values():
            problem = await _sample_check(env, scenario)
            if problem:
                invalid[scenario.name] = problem
                log(f"  ! {scenario.name}: {problem}")
        for rep in range(config.repetitions):
            order = windows if rep % 2 == 0 else list(reversed(windows))
            log(f"  repetition {rep + 1}/{config.repetitions}: {len(order)} windows")
            for scenario, clients in order:
                if scenario.name in invalid:
                    continue
                if not env.measured_process(scenario).alive():
                    process = env.measured_process(scenario)
                    invalid[scenario.name] = f"{process.name} exited: {process.output()[-500:]}"
                    log(f"  ! {scenario.name}: {invalid[scenario.name]}")
                    continue
                window = await _measure(env, scenario, clients, config)
                cells[(scenario.name, clients)].windows.append(window)
        for name, process in env.proxies.items():
            if process.alive():
                peak_rss[name] = process.usage().peak_rss
    finally:
        env.stop()
    return _results(config, windows, cells, invalid, skipped, peak_rss, proxies)


def _results(config, windows, cells, invalid, skipped, peak_rss, proxies) -> dict[str, Any]:
    scenarios: dict[str, dict[str, Any]] = {}
    for scenario, _ in windows:
        scenarios.setdefault(scenario.name, {
            "label": scenario.label,
            "proxy": scenario.proxy,
            "proxy_label": next((p.label for p in proxies if p.name == scenario.proxy), "none (direct)"),
            "tls": scenario.tls,
            "requests": [f"{r.method} {r.path}" for r in scenario.requests],
            "bare": scenario.bare,
            "direct": scenario.direct,
            "peak_rss_mb": round(peak_rss[scenario.proxy] / 2**20, 1) if scenario.proxy in peak_rss else None,
            "invalid": invalid.get(scenario.name),
            "clients": {},
        })
    for (name, clients), cell in cells.items():
        if cell.windows:
            scenarios[name]["clients"][str(clients)] = cell.summary()
    _add_ratios(scenarios)
    return {"config": config.__dict__, "scenarios": scenarios, "skipped": skipped}


def _add_ratios(scenarios: dict[str, dict[str, Any]]) -> None:
    """× bare and × direct: this scenario's req/s over the reference's, same client count.
    Only for proxied scenarios; bare mitmdump's own runs get × direct only."""
    for entry in scenarios.values():
        references = {"x_bare": entry["bare"] if entry["proxy"] not in (None, "bare") else None,
                      "x_direct": entry["direct"] if entry["proxy"] is not None else None}
        for n, cell in entry["clients"].items():
            for column, reference in references.items():
                ref = scenarios.get(reference, {}).get("clients", {}).get(n)
                cell[column] = round(cell["rps"] / ref["rps"], 3) if ref and ref["rps"] else None
