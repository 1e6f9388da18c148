"""The recorder addon in process (PORTCULLIS_RECORDER=thread: the recording on a writer
thread of this process, so no recording process is started): option values it refuses,
naming the option; options changed while recording; a flow no addon decided; a journal
left by a crash; an analyst socket that cannot be bound; the bound on known secrets."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.recorder import addon as recorder_module
from addons.recorder.addon import RecorderAddon
from recordings import control
from recordings.feed import Feed
from recordings.journal import Journal


@pytest.fixture
def thread_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(recorder_module.IN_PROCESS_ENV, "thread")


@pytest.mark.usefixtures("thread_mode")
@pytest.mark.parametrize(("option", "value", "message"), [
    ("portcullis_max_body_record", -1, "portcullis_max_body_record must be >= 0"),
    ("portcullis_retain_days", -3, "portcullis_retain_days must be >= 0"),
    ("portcullis_lake_maintenance", -1.0, "portcullis_lake_maintenance must be >= 0"),
    ("portcullis_sql_timeout", 0.0, "portcullis_sql_timeout must be > 0"),
    ("portcullis_db_memory_limit", "lots", "memory limit 'lots': expected a size like 512MB"),
    ("portcullis_db_threads", 0, "threads 0: expected 1..64"),
    ("portcullis_lake", "postgresql://catalog.example/lake", "needs --lake-data"),
    ("portcullis_lake", "   ", "the lake is empty"),
])
def test_bad_option_values_are_refused(option: str, value: object, message: str) -> None:
    addon = RecorderAddon(FlowStates())
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, **{option: value})
        assert addon.store is None  # nothing was opened on the way


@pytest.mark.usefixtures("thread_mode")
def test_a_lake_without_a_db_path_is_refused(tmp_path: Path) -> None:
    addon = RecorderAddon(FlowStates())
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="a lake needs --db too"):
        tctx.configure(addon, portcullis_lake=str(tmp_path / "lake"))


@pytest.mark.usefixtures("thread_mode")
def test_a_file_that_is_not_a_recording_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_bytes(b"this is not a DuckDB database\n" * 200)
    addon = RecorderAddon(FlowStates())
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=f"cannot record to {path}"):
        tctx.configure(addon, portcullis_db=str(path))
    assert addon.store is None and addon.writer is None


def flows_in(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT id, decision, reason FROM flows ORDER BY id").fetchall()


@pytest.mark.usefixtures("thread_mode")
def test_options_changed_while_recording_reach_the_open_recording(tmp_path: Path) -> None:
    db = tmp_path / "rec.duckdb"
    addon = RecorderAddon(FlowStates())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_db=str(db))
        health = addon._health()
        assert (health["db"], health["lake"], health["recording"]) == (str(db), None, "ok")
        tctx.configure(addon, portcullis_retain_days=7)
        assert addon.writer.retain_days == 7
        tctx.configure(addon, portcullis_db_memory_limit="64MB", portcullis_sql_timeout=5.0)
        assert addon.store.settings.memory_limit == "64MB"
        assert addon.store.limits.timeout_s == 5.0
        with duckdb.connect() as reference:  # how DuckDB itself reports 64MB
            expected = reference.execute("SET memory_limit = '64MB'; SELECT current_setting('memory_limit')")
            expected = expected.fetchone()[0]
        with addon.store.cursor() as cur:
            assert cur.execute("SELECT current_setting('memory_limit')").fetchone()[0] == expected
        addon.done()


@pytest.mark.usefixtures("thread_mode")
def test_a_flow_no_addon_decided_is_recorded_as_an_error(tmp_path: Path) -> None:
    db = tmp_path / "rec.duckdb"
    states = FlowStates()
    addon = RecorderAddon(states)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_db=str(db))
        flow = tflow.tflow(resp=True)
        addon.requestheaders(flow)
        addon.response(flow)  # a response, but nobody set a decision
        assert states.of(flow).reason == "no decision was recorded"
        addon.done()
    assert flows_in(db) == [(flow.id, "error", "no decision was recorded")]


@pytest.mark.usefixtures("thread_mode")
def test_a_journal_left_by_a_crash_is_recorded_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "rec.duckdb"
    addon = RecorderAddon(FlowStates())
    # One mitmproxy context per test: its log handler outlives it (and its closed loop).
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_db=str(db))  # creates the database
        tctx.configure(addon, portcullis_db="")
        journal = Journal(db)
        journal.open()
        journal.note_fields("received", "crashed-flow", time.time(), {
            "method": "GET", "scheme": "http", "host": "api.example", "port": 80, "path": "/lost",
            "query": None, "client_addr": "127.0.0.1"})
        journal.close(delete=False)  # as a killed gateway leaves it
        with caplog.at_level(logging.WARNING, "portcullis.recorder"):
            tctx.configure(addon, portcullis_db=str(db))
        addon.done()
    assert "flows were unfinished when the gateway last stopped (1 known only from the journal)" in caplog.text
    assert flows_in(db) == [("crashed-flow", "error", "gateway_restart")]


@pytest.mark.usefixtures("thread_mode")
def test_the_crash_warning_counts_each_unfinished_flow_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "rec.duckdb"
    journal = Journal(db)
    journal.open()
    journal.note_fields("received", "crashed-flow", time.time(), {
        "method": "GET", "scheme": "http", "host": "api.example", "port": 80, "path": "/lost",
        "query": None, "client_addr": "127.0.0.1"})
    journal.close(delete=False)
    addon = RecorderAddon(FlowStates())
    with taddons.context(addon) as tctx:
        with caplog.at_level(logging.WARNING, "portcullis.recorder"):
            tctx.configure(addon, portcullis_db=str(db))
        addon.done()
    assert len(flows_in(db)) == 1
    assert "recording: 1 flows were unfinished" in caplog.text


@pytest.mark.usefixtures("thread_mode")
def test_an_analyst_socket_that_cannot_be_bound_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "rec.duckdb"
    addon = RecorderAddon(FlowStates())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_db=str(db))
        socket = control.socket_path(db)
        socket.mkdir()  # something that is not a socket is in the way
        (socket / "keep").write_text("x")

        async def run() -> None:
            addon.running()

        with caplog.at_level(logging.ERROR, "portcullis.recorder"):
            asyncio.run(run())
        assert addon.control is None
        assert f"no analyst endpoint at {socket}" in caplog.text
        addon.done()


def test_a_recording_process_that_cannot_start_early_is_only_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(recorder_module.IN_PROCESS_ENV, raising=False)

    def no_fork() -> tuple:
        raise OSError("out of processes")

    monkeypatch.setattr(Feed, "spawn", staticmethod(no_fork))
    addon = RecorderAddon(FlowStates())
    with caplog.at_level(logging.WARNING, "portcullis.recorder"), taddons.context(addon):
        assert addon._spare is None
    assert "cannot start the recording process early: out of processes" in caplog.text


class StuckProcess:
    def __init__(self) -> None:
        self.killed = False

    def wait(self, timeout: float) -> int:
        raise subprocess.TimeoutExpired("sink", timeout)

    def kill(self) -> None:
        self.killed = True


class Conn:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_an_unused_recording_process_that_does_not_exit_is_killed() -> None:
    addon = RecorderAddon(FlowStates())
    process, conn = StuckProcess(), Conn()
    addon._spare = (process, conn)
    addon._drop_spare()
    assert conn.closed and process.killed
    assert addon._spare is None


def test_known_secrets_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder_module, "MAX_KNOWN_SECRETS", 2)
    states = FlowStates()
    addon = RecorderAddon(states)
    for secret in ("first-secret", "second-secret", "third-secret"):
        state = states.of(tflow.tflow())
        state.secrets.add(secret)
        addon._remember_secrets(state)
    assert addon._known == ("second-secret", "third-secret")
    assert addon._known_set == frozenset(addon._known)


@pytest.mark.usefixtures("thread_mode")
def test_events_after_recording_was_turned_off_are_dropped(tmp_path: Path) -> None:
    db = tmp_path / "rec.duckdb"
    states = FlowStates()
    addon = RecorderAddon(states)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_db=str(db))
        tctx.configure(addon, portcullis_db="")  # recording off, still subscribed
        assert addon.writer is None
        flow = tflow.tflow()
        states.of(flow).emit("received", method="GET")  # must not raise
        addon.done()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM events WHERE flow_id = ?", [flow.id]).fetchone() == (0,)
