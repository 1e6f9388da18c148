"""Turn a run's results into the targets check, a Markdown report and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _cell(results: dict[str, Any], scenario: str, clients: int) -> dict[str, Any] | None:
    entry = results.get("macro", {}).get("scenarios", {}).get(scenario)
    if not entry or entry.get("invalid"):
        return None
    return entry["clients"].get(str(clients))


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, evaluated on this run (reported, never asserted)."""
    out: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, met: bool | None, detail: str) -> None:
        out.append({"goal": goal, "value": value, "met": met, "detail": detail})

    rec = "portcullis-10-rec" if _cell(results, "portcullis-10-rec", 16) else "portcullis-10"
    note = "" if rec == "portcullis-10-rec" else " (recording not available: measured without it)"
    bare16, rec16 = _cell(results, "bare", 16), _cell(results, rec, 16)
    if bare16 and rec16:
        ratio = rec16["rps"] / bare16["rps"]
        add("10 rules + recording: ≥ 0.85× bare mitmdump req/s at 16 clients", round(ratio, 3), ratio >= 0.85,
            f"{ratio:.2f}×: {rec16['rps']:.0f} vs {bare16['rps']:.0f} req/s; CPU per request "
            f"{rec16['cpu_s_per_1k'] / bare16['cpu_s_per_1k']:.2f}× bare's{note}")
    bare1, rec1 = _cell(results, "bare", 1), _cell(results, rec, 1)
    if bare1 and rec1:
        delta = rec1["p50_ms"] - bare1["p50_ms"]
        add("10 rules + recording: p50 ≤ bare + 1 ms at 1 client", round(delta, 3), delta <= 1.0,
            f"p50 {rec1['p50_ms']:.2f} ms vs {bare1['p50_ms']:.2f} ms{note}")
    r10, r1000 = _cell(results, "portcullis-10", 16), _cell(results, "portcullis-1000", 16)
    if r10 and r1000:
        cost = r1000["cpu_s_per_1k"] / r10["cpu_s_per_1k"]
        add("1,000 rules: ≤ 1.1× the cost of 10 rules (CPU per request, 16 clients)", round(cost, 3),
            cost <= 1.1, f"{r1000['cpu_s_per_1k']:.2f} vs {r10['cpu_s_per_1k']:.2f} CPU s per 1,000 requests; "
            f"req/s ratio {r1000['rps'] / r10['rps']:.2f}")
    plain, masked = _cell(results, "portcullis-json1k", 1), _cell(results, "portcullis-mask1k", 1)
    if plain and masked:
        delta = masked["p50_ms"] - plain["p50_ms"]
        add("masking 1 KiB JSON with 5 masks: ≤ +1 ms p50 (1 client)", round(delta, 3), delta <= 1.0,
            f"p50 {masked['p50_ms']:.2f} ms vs {plain['p50_ms']:.2f} ms unmasked")
    memory = results.get("memory")
    if memory and memory.get("growth") is not None:
        first, last = memory["samples"][0], memory["samples"][-1]
        add(f"memory flat (within 10%) from {first['flows']:,} to {last['flows']:,} flows", memory["growth"],
            abs(memory["growth"]) <= 0.10,
            f"RSS {first['rss_mb']} MB after {first['flows']:,} flows, {last['rss_mb']} MB after "
            f"{last['flows']:,} ({memory['proxy']})")
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def macro_table(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | clients | req/s | p50 ms | p90 ms | p99 ms | proxy CPU s / 1k req | proxy peak RSS MB "
        "| × bare | × direct | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in results.get("macro", {}).get("scenarios", {}).items():
        if entry.get("invalid"):
            lines.append(f"| {name} | | | | | | | | | | invalid: {entry['invalid']} |")
            continue
        for n, c in sorted(entry["clients"].items(), key=lambda kv: int(kv[0])):
            errors = sum(c["errors"].values())
            lines.append(
                f"| {name} | {n} | {c['rps']:,.0f} | {_fmt(c['p50_ms'])} | {_fmt(c['p90_ms'])} | {_fmt(c['p99_ms'])} "
                f"| {_fmt(c['cpu_s_per_1k'])} | {_fmt(entry['peak_rss_mb'], 0)} | {_fmt(c['x_bare'])} "
                f"| {_fmt(c['x_direct'], 3)} | {errors or ''} |"
            )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    from bench import micro

    meta = results["meta"]
    parts = [
        "# Portcullis benchmark results",
        "",
        f"Run `{meta['command']}` at {meta['started']} on {meta['machine']} "
        f"({meta['duration_s']:.0f} s in all).",
        "",
    ]
    if "macro" in results:
        config = results["macro"]["config"]
        parts += [
            "## Throughput and latency",
            "",
            f"Medians of {config['repetitions']} interleaved repetitions of {config['duration']} s each "
            f"(after {config['warmup']} s warm-up); keep-alive clients, one request in flight per client. "
            "CPU and RSS are the proxy process's (for direct: the upstream's). × bare / × direct: req/s "
            "relative to the same requests through bare mitmdump / straight to the upstream.",
            "",
            macro_table(results),
            "",
        ]
        direct = results["macro"]["scenarios"].get("direct", {}).get("clients", {}).get("16")
        if direct and direct.get("loadgen_cpu_s_per_1k"):
            per_request = direct["loadgen_cpu_s_per_1k"]
            parts += [f"Load generator: {per_request:.3f} ms CPU per request in the direct run, a ceiling of "
                      f"about {1000 / per_request:,.0f} req/s on one core; the upstream served "
                      f"{direct['rps']:,.0f} req/s. Neither is the bottleneck of any proxied run.", ""]
        for name, why in results["macro"].get("skipped", {}).items():
            parts.append(f"- skipped {name}: {why}")
        parts.append("")
    if results.get("targets"):
        parts += ["## Targets", "", "| goal | this run | met |", "|---|---|---|"]
        for t in results["targets"]:
            parts.append(f"| {t['goal']} | {t['detail']} | {'yes' if t['met'] else '**no**'} |")
        parts.append("")
    if "micro" in results:
        parts += ["## Rule evaluation cost (in-process, per request)", "", micro.table(results["micro"]), ""]
    if "memory" in results:
        parts += ["## Memory vs flows", "", "| flows | RSS MB | peak RSS MB | non-200 | elapsed s |",
                  "|---:|---:|---:|---:|---:|"]
        for s in results["memory"]["samples"]:
            parts.append(f"| {s['flows']:,} | {s['rss_mb']} | {s['peak_rss_mb']} | {s['non_200']} | {s['elapsed_s']} |")
        parts.append("")
    for name, target in results.get("targets_run", {}).items():
        parts += [f"## Target: {name}", "", f"`{target['command']}` — {target['status']} "
                  f"in {target['duration_s']:.0f} s", "", "```", target["output"].strip(), "```", ""]
    return "\n".join(parts)


def plot(results: dict[str, Any], path: Path, clients: int = 16) -> Path | None:
    """Horizontal bars: req/s, p99 and CPU per request per scenario at `clients` clients
    (direct runs omitted: they are two orders of magnitude off the scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = []
    for name, entry in results.get("macro", {}).get("scenarios", {}).items():
        cell = entry["clients"].get(str(clients))
        if cell and entry["proxy"] and not entry.get("invalid"):
            rows.append((name, cell["rps"], cell["p99_ms"], entry["proxy"] == "bare", cell["cpu_s_per_1k"]))
    if not rows:
        return None
    rows.reverse()
    names = [r[0] for r in rows]
    colors = ["#999999" if r[3] else "#3366aa" for r in rows]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 0.38 * len(rows) + 1.5), sharey=True)
    left.barh(names, [r[1] for r in rows], color=colors)
    left.set_xlabel(f"requests/s at {clients} clients (higher is better)")
    middle.barh(names, [r[2] for r in rows], color=colors)
    middle.set_xlabel("p99 latency, ms (lower is better)")
    right.barh(names, [r[4] for r in rows], color=colors)
    right.set_xlabel("proxy CPU ms per request (lower is better)")
    for axis in (left, middle, right):
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle("Portcullis (blue) vs bare mitmdump (grey), same run, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
