"""PORTCULLIS_RECORDER=thread: the recording written on a writer thread of the gateway's
own process (the comparison mode of bench/recording.py and bench/cpusplit.py) records
what the default recording process records, recovers a journal and applies retention.

The default (a recording process, recordings/sink.py) is covered by tests/test_recorder.py;
this mode had no test since the recording moved out of the process."""

from __future__ import annotations

from pathlib import Path

import duckdb

from tests.support.recording_reader import NO_DELETES, proxied_session, wait_for_flow

THREAD = {"PORTCULLIS_RECORDER": "thread"}


def children(pid: int) -> list[str]:
    """The process's child pids (the default mode has one: the recording process)."""
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def test_thread_mode_records_flows_and_decisions_and_recovers_on_restart(start_gateway, upstream):
    gateway = start_gateway(NO_DELETES, "--retain-days", "30", env=THREAD)
    with proxied_session(gateway) as http:
        allowed = http.get(upstream.url("/thread/read"), timeout=10)
        blocked = http.delete(upstream.url("/thread/row"), timeout=10)
    assert allowed.status_code == 200 and blocked.status_code == 403
    for response, decision in ((allowed, "allowed"), (blocked, "blocked")):
        row = wait_for_flow(gateway.db, response.headers["x-portcullis-flow-id"])
        assert row["decision"] == decision, row
    assert children(gateway.process.pid) == []  # recorded in the gateway's own process
    assert gateway.stop() == 0
    with duckdb.connect(str(gateway.db), read_only=True) as con:
        kinds = {kind for (kind,) in con.execute("SELECT DISTINCT kind FROM events").fetchall()}
        paths = sorted(path for (path,) in con.execute("SELECT path FROM flows").fetchall())
    assert {"received", "decided", "forwarded", "completed"} <= kinds, kinds
    assert paths == ["/thread/read", "/thread/row"]

    # A restart on the same file in the same mode opens it again (journal replay, retention).
    again = start_gateway(NO_DELETES, "--db", str(gateway.db), "--retain-days", "30", env=THREAD)
    with proxied_session(again) as http:
        third = http.get(upstream.url("/thread/again"), timeout=10)
    assert wait_for_flow(again.db, third.headers["x-portcullis-flow-id"])["decision"] == "allowed"
    assert again.stop() == 0
    assert "Traceback" not in gateway.output + again.output
