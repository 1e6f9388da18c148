"""The test harness's zygote (tests/support/zygote.py): a fork runs like a new interpreter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from gateway.settings import PROJECT_ROOT
from tests.support import zygote_probe
from tests.support.gateway import GatewayProcess
from tests.support.zygote import ForkedProcess, Zygote, run, wanted


def probe_in(directory: Path) -> Path:
    """A copy of the probe in ``directory``, run as ``python -m zygote_probe`` from there:
    found only through sys.path[0]."""
    shutil.copy(Path(zygote_probe.__file__), directory / "zygote_probe.py")
    return directory


def probe(tmp_path, env: dict[str, str], *args: str) -> tuple[int, dict]:
    process = Zygote.get().spawn("zygote_probe", list(args), env, probe_in(tmp_path))
    output = process.stdout.read()
    return process.wait(30), json.loads(output.splitlines()[-1])


def test_a_child_has_its_own_environment_directory_and_argv_and_imports_our_packages_itself(tmp_path):
    code, seen = probe(tmp_path, {**os.environ, "ZYGOTE_PROBE": "one", "ZYGOTE_PROBE_EXIT": "3"}, "a", "b c")
    assert code == 3
    assert seen["ours_loaded"] == []  # imported after the environment is set, not in the zygote
    assert seen["mitmproxy_loaded"]  # third-party modules are imported before the fork
    assert seen["cwd"] == seen["path0"] == str(tmp_path)
    assert seen["argv"] == ["a", "b c"] and seen["env"] == "one"
    _, again = probe(tmp_path, {**os.environ, "ZYGOTE_PROBE": "two"})
    assert again["env"] == "two"  # nothing of one child's environment reaches the next


def test_run_captures_stdout_and_stderr_apart_and_kills_on_timeout(tmp_path):
    done = run("zygote_probe", ["x"], cwd=probe_in(tmp_path), timeout=30)
    assert done.returncode == 0 and done.stderr == "to stderr\n"
    assert json.loads(done.stdout)["stdin"] == ""  # /dev/null, not the test process's stdin
    with pytest.raises(subprocess.TimeoutExpired):
        run("zygote_probe", [], env={**os.environ, "ZYGOTE_PROBE_SLEEP": "60"}, cwd=tmp_path, timeout=0.5)


def test_the_zygote_itself_runs_one_thread_so_a_fork_copies_everything():
    zygote = Zygote.get()
    assert os.listdir(f"/proc/{zygote.process.pid}/task") == [str(zygote.process.pid)]


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateways fork here even in a run under coverage.py (which otherwise turns forks off)."""
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    monkeypatch.delenv("PORTCULLIS_TEST_FORK", raising=False)


def test_a_forked_gateway_is_signalled_and_reports_its_exit_code(tmp_path, confdir, forking):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\ndefault: allow\n")
    gateway = GatewayProcess(rules, confdir).start()
    assert isinstance(gateway.process, ForkedProcess)
    assert gateway.process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        gateway.process.wait(0.1)
    assert gateway.stop(signal.SIGTERM) == 0
    killed = GatewayProcess(rules, confdir).start()
    killed.process.kill()
    assert killed.process.wait(20) == -signal.SIGKILL


def test_a_start_that_fails_gives_its_exit_code_and_message(tmp_path, confdir, forking):
    gateway = GatewayProcess(tmp_path / "missing.yaml", confdir)
    with pytest.raises(RuntimeError, match="missing.yaml"):
        gateway.start()
    assert gateway.process.returncode == 2


def test_a_changed_python_variable_the_switch_or_coverage_means_a_new_interpreter(monkeypatch, forking):
    assert wanted(dict(os.environ))
    assert not wanted({**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "elsewhere")})
    monkeypatch.setenv("COVERAGE_PROCESS_START", "coverage.rc")  # coverage.py measures new interpreters
    assert not wanted(dict(os.environ))
    monkeypatch.delenv("COVERAGE_PROCESS_START")
    monkeypatch.setenv("PORTCULLIS_TEST_FORK", "0")
    assert not wanted(dict(os.environ))
