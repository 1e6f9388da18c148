"""dev.py's scheduling logic: how the second Python line's modules are split between the
process that starts with the first line and the one that starts when it is done, the
per-module seconds read from pytest's JUnit XML, and the closing tally."""

from __future__ import annotations

import json

import dev


def test_the_late_process_gets_half_of_what_outlasts_the_first_line():
    durations = {"first_line_s": 300.0, "modules": {
        "tests/a.py": 200.0, "tests/b.py": 150.0, "tests/c.py": 90.0, "tests/d.py": 40.0, "tests/e.py": 20.0}}
    modules = ["tests/a.py", "tests/b.py", "tests/c.py", "tests/d.py", "tests/e.py", "tests/new.py"]
    early, late = dev.split_late(modules, durations)
    # 500 s in all, 300 s of it beside the first line: the remaining 200 s are shared, so
    # the late process takes at most 100 s, largest modules first that still fit.
    assert late == ["tests/c.py"]
    assert early == ["tests/a.py", "tests/b.py", "tests/d.py", "tests/e.py", "tests/new.py"]  # order kept


def test_no_split_without_data_or_when_the_first_line_is_the_longer():
    modules = ["tests/a.py", "tests/b.py"]
    assert dev.split_late(modules, {}) == (modules, [])
    assert dev.split_late(modules, {"first_line_s": 900.0,
                                    "modules": {"tests/a.py": 100.0, "tests/b.py": 100.0}}) == (modules, [])


def test_module_seconds_sum_setup_call_and_teardown_per_module(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_x" name="test_one" time="1.5"/>'
        '<testcase classname="tests.test_x" name="test_two" time="0.25"/>'
        '<testcase classname="tests.test_y.TestThings" name="test_three" time="2"/>'
        '<testcase classname="" name="collect" time="9"/>'
        '</testsuite></testsuites>')
    broken = tmp_path / "broken.xml"
    broken.write_text("<testsuites")  # an interrupted run: skipped, not a crash
    assert dev.module_seconds([junit, broken, tmp_path / "missing.xml"]) == {
        "tests/test_x.py": 1.75, "tests/test_y.py": 2.0}


def test_the_seed_in_the_repository_names_existing_modules():
    seed = json.loads(dev.DURATIONS_SEED.read_text())
    assert seed["first_line_s"] > 0
    missing = [module for module in seed["modules"] if not (dev.ROOT / module).exists()]
    assert missing == [], "refresh tests/module-durations.json from build/module-durations.json"


def test_tally_reads_pytests_closing_line():
    assert dev.tally("...\n==== 3 failed, 120 passed, 2 errors in 12.5s ====\n") == (120, 5)
    assert dev.tally("no summary here") is None
    # a -k filter can leave one of the second line's processes nothing to run
    assert dev.tally("==== 149 deselected, 2 warnings in 6.16s ====\n") == (0, 0)
