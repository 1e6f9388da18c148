"""recordings/maintenance.py's round and its local-lake lock, in-process (issue 13).

The round's SQL is DuckLake's (the lake tests run it for real); here a recording cursor
checks the order of the steps, that retention runs only when configured, that a second
maintainer of the same local lake skips the round, and that a failed round never raises.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from recordings.maintenance import Maintenance, exclusive


class Cursor:
    def __init__(self, fail: bool = False) -> None:
        self.sql: list[str] = []
        self.fail = fail

    def execute(self, sql: str, *args):
        if self.fail:
            raise RuntimeError("catalog gone\nsecond line")
        self.sql.append(sql)
        return self


@pytest.fixture
def store(tmp_path):
    lake = SimpleNamespace(shared=False, catalog_file=tmp_path / "catalog.ducklake")
    deleted: list[int] = []

    def delete_older_than(cur, days):
        deleted.append(days)
        return 3, 5, None

    return SimpleNamespace(lake=lake, delete_older_than=delete_older_than, deleted=deleted)


def test_a_round_runs_the_steps_in_order_with_retention(store, tmp_path) -> None:
    upkeep = Maintenance(store, every_s=0.0, retain_days=30)
    cur = Cursor()
    done = upkeep.run(cur)
    assert done["deleted_flows"] == 3 and done["deleted_events"] == 5 and "seconds" in done
    assert store.deleted == [30] and upkeep.runs == 1
    steps = [s.split("(")[0] for s in cur.sql]
    assert steps == ["CALL ducklake_flush_inlined_data", "CALL ducklake_merge_adjacent_files",
                     "CALL ducklake_expire_snapshots", "CALL ducklake_cleanup_old_files"]
    assert (tmp_path / "maintenance.lock").exists()


def test_without_retention_nothing_is_deleted(store) -> None:
    done = Maintenance(store, every_s=0.0).run(Cursor())
    assert "deleted_flows" not in done and store.deleted == []


def test_a_second_maintainer_skips_the_round(store) -> None:
    with exclusive(store.lake) as held:
        assert held is True
        with exclusive(store.lake) as other:
            assert other is False
        cur = Cursor()
        assert Maintenance(store, every_s=0.0).run(cur) is None and cur.sql == []
    with exclusive(store.lake) as again:
        assert again is True  # released when the holder left


def test_maybe_run_waits_for_its_time_and_swallows_failures(store, caplog) -> None:
    upkeep = Maintenance(store, every_s=60.0)
    assert not upkeep.due() and upkeep.maybe_run(Cursor()) is None
    upkeep._next = time.monotonic() - 1
    assert upkeep.maybe_run(Cursor(fail=True)) is None
    assert "lake maintenance failed (will try again): catalog gone" in caplog.text
    assert not upkeep.due()  # the next try waits a whole period
    assert not Maintenance(store, every_s=0.0).due()  # 0 switches maintenance off
