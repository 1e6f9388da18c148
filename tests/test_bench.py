"""The benchmark harness end to end, at toy size: it measures, it reports, it plots.

No timing assertions (numbers belong in bench/results, not in tests): only that each
scenario really went through the path it claims, and that the report is complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.settings import PROJECT_ROOT


def test_python_m_bench_runs_a_tiny_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--targets", "macro", "--only", "direct", "portcullis-10",
         "portcullis-mix", "--clients", "1", "16", "--duration", "0.5", "--warmup", "0.5",
         "--repetitions", "1", "--out", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "latest.json").read_text())
    scenarios = results["macro"]["scenarios"]
    assert set(scenarios) == {"direct", "portcullis-10", "portcullis-mix"}
    for name in ("direct", "portcullis-10"):
        cells = scenarios[name]["clients"]
        assert set(cells) == {"1", "16"}
        for cell in cells.values():
            assert cell["requests"] > 0 and cell["rps"] > 0
            assert cell["errors"] == {}
            assert set(cell["statuses"]) == {"200"}
    gateway = scenarios["portcullis-10"]
    assert gateway["peak_rss_mb"] > 10  # measured from the gateway process, not from us
    assert gateway["clients"]["16"]["cpu_s_per_1k"] > 0
    # Half the mix is GET /admin/users: blocked by the gateway with a 403, not by the upstream.
    mix = scenarios["portcullis-mix"]["clients"]["16"]["statuses"]
    assert set(mix) == {"200", "403"}
    assert 0.3 < mix["403"] / (mix["200"] + mix["403"]) < 0.7
    assert scenarios["portcullis-10"]["clients"]["1"]["x_direct"] is not None
    markdown = (out / "latest.md").read_text()
    assert "| portcullis-10 | 16 |" in markdown
    assert (out / "latest.png").read_bytes().startswith(b"\x89PNG")
