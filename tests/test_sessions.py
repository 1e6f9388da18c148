"""Session grouping (SQL against a real DuckDB file) and the timeline geometry."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest

from bench.audit import seed
from recordings import schema
from review_ui.audit.flowquery import FilterError
from review_ui.audit.sessions import MIN_BAR_PCT, sessions_page, timeline


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    path = tmp_path_factory.mktemp("sessions") / "flows.duckdb"
    con = duckdb.connect(str(path))
    schema.migrate(con, str(path))
    seed(con, 400)  # sessions of 20 flows; 2 in 10 flows have no session id
    yield con
    con.close()


def query_of(con):
    def query(sql, params):
        cur = con.execute(sql, params)
        return [d[0] for d in cur.description], cur.fetchall()

    return query


def run(con, **kwargs):
    return sessions_page(query_of(con), **kwargs)[0]


def test_every_flow_belongs_to_exactly_one_session(con):
    sessions = run(con, limit=10_000)
    assert sum(s["flows"] for s in sessions) == 400
    named = [s for s in sessions if s["session_id"]]
    by_connection = [s for s in sessions if not s["session_id"]]
    assert {s["session_id"] for s in named} == {f"sess-{i}" for i in range(20)}
    assert all(s["flows"] == 16 for s in named)
    assert all(s["conn_identity"] and s["conn_client"] and s["flows"] >= 1 for s in by_connection)
    assert [s["last_at"] for s in sessions] == sorted((s["last_at"] for s in sessions), reverse=True)
    assert all(s["first_at"] <= s["last_at"] for s in sessions)


def test_keyset_pages_cover_all_sessions_once_with_the_same_figures(con):
    everything = run(con, limit=10_000)
    seen, after = [], ""
    while True:
        page, after = sessions_page(query_of(con), after=after, limit=7)
        seen += page
        if after is None:
            break
    assert seen == everything


def test_filters(con):
    found = run(con, identity="agent-3", limit=10_000)
    assert found and all("agent-3" in s["identities"].split(", ") for s in found)
    assert len(found) < len(run(con, limit=10_000))
    assert run(con, since="2030-01-01") == []
    with pytest.raises(FilterError, match="since"):
        run(con, since="soon")


def test_timeline_places_requests_and_waits_on_one_axis():
    t0 = datetime(2026, 11, 21, 9, 0, 0)
    flows = [
        {"id": "a", "started_at": t0, "ended_at": t0 + timedelta(seconds=1)},
        {"id": "b", "started_at": t0 + timedelta(seconds=2), "ended_at": t0 + timedelta(seconds=10)},
        {"id": "c", "started_at": t0 + timedelta(seconds=10), "ended_at": None},
    ]
    waits = {"b": [{"start": t0 + timedelta(seconds=2), "end": t0 + timedelta(seconds=9), "outcome": "approved",
                    "by": "bob"}]}
    line = timeline(flows, waits)
    a, b, c = line["items"]
    assert (a["x"], a["width"]) == (0.0, 10.0)
    assert (b["x"], b["width"]) == (20.0, 80.0)
    assert (b["waits"][0]["x"], b["waits"][0]["width"], b["waits"][0]["seconds"]) == (20.0, 70.0, 7.0)
    assert c["width"] == MIN_BAR_PCT and c["x"] <= 100 - MIN_BAR_PCT  # an instant stays visible
    assert line["span_s"] == 10.0
    assert timeline([], {})["items"] == []
