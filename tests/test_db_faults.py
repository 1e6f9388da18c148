"""The recording's disk fails: by default the gateway stops forwarding and says why
(fail closed), recovers by itself when the disk is usable again, and loses no flow an
agent got an answer for. Real file systems: a small tmpfs the test mounts (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.gateway import GatewayProcess
from tests.support.hardening import recorded_flows
from tests.support.upstream import UpstreamServer

RULES = "version: 1\ndefault: allow\n"


def _mount(path: Path, *options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=24m", *options]), "tmpfs", str(path)],
                   check=True, capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, unmounted afterwards. Skips where mounting is not allowed."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    try:
        _mount(mountpoint)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {getattr(exc, 'stderr', exc)}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


def start(tmp_path: Path, confdir: Path, db: Path, *args: str) -> GatewayProcess:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return GatewayProcess(rules, confdir, ["--db", str(db), "--ui", "off", *args]).start()


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte: megabytes, then pages, then bytes (what is left
    after the last whole megabyte would otherwise hold many small journal writes)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


class Agent:
    def __init__(self, gateway: GatewayProcess, upstream: UpstreamServer) -> None:
        self.http = requests.Session()
        self.http.proxies = {"http": gateway.proxy_url}
        self.upstream = upstream
        self.answered: dict[str, int] = {}  # flow id -> status the agent got

    def get(self, path: str) -> requests.Response:
        response = self.http.get(self.upstream.url(path), timeout=15)
        self.answered[response.headers["X-Portcullis-Flow-Id"]] = response.status_code
        return response


def test_disk_full_stops_forwarding_then_recovers_without_losing_flows(tmp_path, confdir, small_disk, upstream):
    gateway = start(tmp_path, confdir, small_disk / "recording.duckdb")
    agent = Agent(gateway, upstream)
    try:
        for i in range(10):
            assert agent.get(f"/before/{i}").status_code == 200
        filler = fill(small_disk)
        statuses = [agent.get(f"/full/{i}").status_code for i in range(30)]
        # Journal lines that still fit in the file's last, already allocated page (tmpfs
        # pages are 4 KiB) are written; the first that does not fit stops forwarding, and
        # from then on every request is refused.
        assert 503 in statuses, statuses
        forwarded_while_full = statuses.index(503)
        assert forwarded_while_full < 20, statuses
        assert statuses[forwarded_while_full:] == [503] * (30 - forwarded_while_full), statuses
        assert [r.path for r in upstream.received if r.path.startswith("/full/")] == [
            f"/full/{i}" for i in range(forwarded_while_full)
        ], "nothing may be forwarded once recording has failed"
        gateway.wait_for_output("No space left on device")
        filler.unlink()
        deadline = time.monotonic() + 15
        while agent.get("/after").status_code != 200:
            assert time.monotonic() < deadline, gateway.output[-2000:]
            time.sleep(0.2)
        gateway.wait_for_output("recording works again")
    finally:
        gateway.stop()
    rows = {row["id"]: row for row in recorded_flows(gateway.db)}
    missing = set(agent.answered) - set(rows)
    assert not missing, f"{len(missing)} answered flows are not in the recording"
    for flow_id, status in agent.answered.items():
        if status == 503:
            assert (rows[flow_id]["decision"], rows[flow_id]["reason"]) == ("error", "recording_unavailable")


def test_allow_is_an_explicit_opt_out(tmp_path, confdir, small_disk, upstream):
    gateway = start(tmp_path, confdir, small_disk / "recording.duckdb", "--on-record-failure", "allow")
    agent = Agent(gateway, upstream)
    try:
        assert agent.get("/before").status_code == 200
        filler = fill(small_disk)
        assert [agent.get(f"/full/{i}").status_code for i in range(5)] == [200] * 5
        assert len([r for r in upstream.received if r.path.startswith("/full/")]) == 5
        filler.unlink()
    finally:
        gateway.stop()


@pytest.mark.parametrize("where", ["read-only file system", "a parent that is a file"])
def test_unwritable_path_stops_the_start_with_a_clear_message(tmp_path, confdir, where):
    if where == "read-only file system":
        mountpoint = tmp_path / "ro"
        mountpoint.mkdir()
        try:
            _mount(mountpoint, "ro")
        except (subprocess.CalledProcessError, FileNotFoundError):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        db = mountpoint / "recording.duckdb"
    else:
        (tmp_path / "file").write_text("x")
        db = tmp_path / "file" / "recording.duckdb"
    try:
        with pytest.raises(RuntimeError) as failed:
            start(tmp_path, confdir, db)
    finally:
        if where == "read-only file system":
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)
    output = str(failed.value)
    assert f"cannot start: cannot record to {db}" in output
    assert "Traceback" not in output
