"""The benchmark harness end to end, at toy size: it measures, it reports, it plots.

No timing assertions (numbers belong in bench/results, not in tests): only that each
scenario really went through the path it claims, and that the report is complete.

The harness's entry points (bench.__main__.main, bench.workers.main: what ``python -m``
runs) are called in this process, which has most of what they import already; the
proxies, the upstream and PostgreSQL they measure are their own processes either way.
Windows are 0.2 s after a 0.25 s warm-up: hundreds of requests per cell. (With a 0.05 s
warm-up, a loaded machine once had a one-client cell whose first response came after
the window closed: 0 requests.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.__main__
import bench.workers
from gateway.settings import PROJECT_ROOT

WINDOW = ["--duration", "0.2", "--warmup", "0.25", "--repetitions", "1"]


@pytest.fixture(autouse=True)
def in_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``python -m bench`` is run from (its subprocesses set their own cwd anyway)."""
    monkeypatch.chdir(PROJECT_ROOT)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_python_m_bench_runs_a_tiny_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = bench.__main__.main(["--targets", "macro", "--only", "direct", "portcullis-10", "portcullis-mix",
                                "--clients", "1", "16", *WINDOW, "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
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


def test_python_m_bench_workers_runs_a_tiny_scaling_table(tmp_path: Path, postgres_dsn: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """bench/workers.py at toy size: every scenario went through what it claims (a sample
    request through each gateway is masked), 2 workers really are 2 processes, and the
    ratios the issue's targets name are computed."""
    out = tmp_path / "workers.json"
    code = bench.workers.main(["--workers", "1,2", "--recording", "off", "--state", postgres_dsn, *WINDOW,
                               "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    result = json.loads(out.read_text())
    assert set(result["scenarios"]) == {"direct", "bare", "gw1", "gw1-off", "gw2-off"}
    assert result["notes"] == [] and result["problems"] == []
    for entry in result["scenarios"].values():
        cell = entry["clients"]["16"]
        assert cell["rps"] > 0 and cell["errors"] == {} and set(cell["statuses"]) == {"200"}
        assert cell["cpu_ms_per_request"] > 0  # the gateway's own CPU (all its workers' for gw2)
    assert "2 workers" in result["scenarios"]["gw2-off"]["label"]
    assert set(result["ratios"]["16"]) == {"gw1_over_bare", "gw1_over_bare_best", "gw2-off_over_gw1-off",
                                           "gw2-off_over_gw1-off_best"}
    assert "| gw2-off: Portcullis, 2 workers, recording off |" in printed.out
