"""The flows table's filters and keyset pages, against a real DuckDB file with the recorder's schema."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from bench.audit import seed
from recordings import schema
from review_ui.audit.flowquery import (
    FilterError,
    FlowFilter,
    decode_cursor,
    encode_cursor,
    make_page,
    page_query,
    parse_time,
)

COUNT = 230


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    path = tmp_path_factory.mktemp("fq") / "flows.duckdb"
    con = duckdb.connect(str(path))
    schema.migrate(con, str(path))
    seed(con, COUNT)
    # Two flows with the same timestamp: the id breaks the tie.
    con.execute("UPDATE flows SET started_at = (SELECT started_at FROM flows ORDER BY started_at LIMIT 1 OFFSET 100) "
                "WHERE id = (SELECT id FROM flows ORDER BY started_at LIMIT 1 OFFSET 101)")
    yield con
    con.close()


def fetch(con, flt=None, after="", before="", limit=50):
    query = page_query(flt or FlowFilter(), after=after, before=before, limit=limit)
    cur = con.execute(query.sql, query.params)
    columns = [d[0] for d in cur.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    return make_page(query, rows, had_cursor=bool(after or before))


def all_ids(con, where="TRUE", params=()):
    return [r[0] for r in con.execute(
        f"SELECT id FROM flows WHERE {where} ORDER BY started_at DESC, id DESC", list(params)).fetchall()]


def test_paging_forward_visits_every_flow_once_newest_first(con):
    seen, page = [], fetch(con, limit=40)
    assert page.newer is None
    while True:
        seen += [r["id"] for r in page.rows]
        if page.older is None:
            break
        page = fetch(con, after=page.older, limit=40)
    assert seen == all_ids(con)


def test_paging_back_returns_the_same_pages(con):
    pages = [fetch(con, limit=40)]
    while pages[-1].older:
        pages.append(fetch(con, after=pages[-1].older, limit=40))
    page = pages[-1]
    for expected in reversed(pages[:-1]):
        page = fetch(con, before=page.newer, limit=40)
        assert [r["id"] for r in page.rows] == [r["id"] for r in expected.rows]
    assert page.newer is None  # back at the newest page


@pytest.mark.parametrize("flt, where, params", [
    (FlowFilter(identity="agent-3"), "identity = ?", ["agent-3"]),
    (FlowFilter(host="API7.example.com"), "host = ?", ["api7.example.com"]),
    (FlowFilter(method="delete"), "method = 'DELETE'", []),
    (FlowFilter(path="orders/1"), "path LIKE '%orders/1%'", []),
    (FlowFilter(status="4xx"), "status_code >= 400 AND status_code < 500", []),
    (FlowFilter(status="201"), "status_code = 201", []),
    (FlowFilter(decision="blocked"), "decision = 'blocked'", []),
    (FlowFilter(rule="rule-7"), "'rule-7' = ANY(rules)", []),
    (FlowFilter(session="sess-3"), "session_id = 'sess-3'", []),
    (FlowFilter(since="2026-10-25", until="2026-11-05T12:00"),
     "started_at >= TIMESTAMP '2026-10-25' AND started_at < TIMESTAMP '2026-11-05 12:00'", []),
    (FlowFilter(identity="agent-1", decision="allowed", method="GET"),
     "identity = 'agent-1' AND decision = 'allowed' AND method = 'GET'", []),
])
def test_filters_select_exactly_the_matching_flows(con, flt, where, params):
    expected = all_ids(con, where, params)
    assert expected, "the seed should contain matches for every filter"
    page = fetch(con, flt, limit=500)
    assert [r["id"] for r in page.rows] == expected


def test_hostile_filter_values_are_parameters_not_sql(con):
    page = fetch(con, FlowFilter(identity="x' OR 1=1 --", path="%' OR ''='"))
    assert page.rows == []


@pytest.mark.parametrize("flt, field", [
    (FlowFilter(status="abc"), "status"), (FlowFilter(decision="maybe"), "decision"),
    (FlowFilter(since="yesterday"), "since"), (FlowFilter(replays="some"), "replays"),
])
def test_bad_filter_values_name_their_field(flt, field):
    with pytest.raises(FilterError, match=f"^{field}:"):
        page_query(flt)


def test_cursor_round_trip_and_damage():
    stamp = datetime(2026, 11, 21, 9, 30, 1, 123456)
    assert decode_cursor(encode_cursor(stamp, "abc-1")) == (stamp, "abc-1")
    with pytest.raises(FilterError, match="cursor"):
        decode_cursor("!!not-a-cursor")


def test_filters_round_trip_through_the_url():
    flt = FlowFilter.from_args({"identity": " bot ", "decision": "blocked", "ignored": "x"})
    assert flt.as_args() == {"identity": "bot", "decision": "blocked"}
    assert FlowFilter.from_args(flt.as_args()) == flt


def test_times_with_zones_become_utc():
    assert parse_time("2026-11-21T10:00+01:00") == datetime(2026, 11, 21, 9, 0)
    assert parse_time("2026-11-21T10:00Z") == datetime(2026, 11, 21, 10, 0)
