"""Reading a recording the way its readers do, for the recording tests and bench/lake.py.

- ``NO_DELETES``: the rules most recording tests run (allow all, block DELETE);
- ``proxied_session``: an HTTP client sent through a gateway by its own settings only
  (the environment's proxies are ignored);
- ``query`` / ``wait_for_rows`` / ``wait_for_flow``: rows through the path of
  ``portcullis sql`` (the gateway's socket, or the file once it stopped), polled with a
  deadline until they are what the test waits for;
- ``lake_reader``: an analyst's own read-only DuckDB on a lake, in this process;
- ``start_analyst`` / ``analyst_result``: the same analyst in a process of its own, with
  the one ATTACH statement, counting a session's flows until all have appeared.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import requests

from recordings.control import ask
from recordings.lake import Lake, attach, extension_directory
from tests.support.gateway import GatewayProcess

T = TypeVar("T")

NO_DELETES = """
    version: 1
    default: allow
    rules:
      - name: no-deletes
        match: {method: DELETE}
        action: block
        reason: Agents may not delete
"""


def proxied_session(gateway: GatewayProcess) -> requests.Session:
    """A client whose only proxy is ``gateway`` (for http and https URLs)."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": gateway.proxy_url, "https": gateway.proxy_url}
    return session


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 10,
         interval: float = 0.05) -> T:
    """``fetch()`` until ``done`` says yes or ``timeout`` has passed; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def query(db: Path, sql: str, params: Any = None) -> list[tuple]:
    """Rows through the same path as `portcullis sql` (the gateway's socket, or the file)."""
    payload: dict[str, Any] = {"sql": sql} if params is None else {"sql": sql, "params": params}
    return [tuple(row) for row in ask(db, "/query", payload)["rows"]]


def wait_for_rows(db: Path, sql: str, expected: list[tuple], timeout: float = 10) -> list[tuple]:
    """The rows of ``sql`` once they equal ``expected`` (or the last ones, at the deadline)."""
    return poll(lambda: query(db, sql), lambda rows: rows == expected, timeout)


def wait_for_flow(db: Path, flow_id: str, timeout: float = 10) -> dict[str, Any]:
    """The flows row of ``flow_id`` as a dict, once it is recorded (AssertionError if never)."""
    result = poll(lambda: ask(db, "/query", {"sql": "SELECT * FROM flows WHERE id = ?", "params": [flow_id]}),
                  lambda result: bool(result["rows"]), timeout)
    assert result["rows"], f"flow {flow_id} was not recorded"
    return dict(zip(result["columns"], result["rows"][0], strict=True))


@contextmanager
def lake_reader(lake: Lake, extensions: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """An analyst's own DuckDB on ``lake``, read-only, with the pinned extension wheels
    installed in ``extensions`` (offline: nothing is downloaded)."""
    with duckdb.connect(config={"extension_directory": str(extension_directory(extensions, lake.extensions)),
                                "autoinstall_known_extensions": "false"}) as con:
        attach(con, lake, read_only=True)
        yield con


#: The analyst's process: plain duckdb and the printed ATTACH; samples (wall time, count,
#: distinct, query ms) of one session pattern's flows until it has seen ``total`` of them;
#: then a write (refused, it is read-only) and, if asked, one of the documented views.
ANALYST = """
import duckdb, json, sys, time
job = json.loads(sys.argv[1])
config = {"extension_directory": job["extensions"]} if job["extensions"] else {}
con = duckdb.connect(config=config)  # without: DuckDB's default extension directory, ~/.duckdb/extensions
con.execute("SET enable_progress_bar = false")
con.execute(job["attach"])
print("attached", flush=True)
samples, deadline = [], time.monotonic() + job["seconds"]
while time.monotonic() < deadline:
    began = time.perf_counter()
    count, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM rec.flows WHERE session_id LIKE ?",
                                  [job["sessions"]]).fetchone()
    samples.append((time.time(), count, distinct, (time.perf_counter() - began) * 1000))
    if job["live"]:
        print(json.dumps({"count": count}), flush=True)  # for wait_seen()
    if count >= job["total"]:
        break
    time.sleep(job["interval"])
try:
    con.execute("INSERT INTO rec.flows (id) VALUES ('x')")
    refused = None
except duckdb.Error as exc:
    refused = str(exc).splitlines()[0]
views = con.execute(f"SELECT count(*) FROM rec.{job['view']}").fetchone()[0] if job["view"] else None
print(json.dumps({"samples": samples, "refused": refused, "views": views}))
"""


def start_analyst(attach_statement: str, sessions: str, total: int, *, extensions: Path | None = None,
                  seconds: float = 120, interval: float = 0.05, view: str | None = None,
                  env: dict[str, str] | None = None, cwd: Path | None = None,
                  live: bool = False) -> subprocess.Popen[str]:
    """The analyst process (``ANALYST``), returned once it has attached (so that it counts
    from before the rows the test sends next): ``sessions`` is a LIKE pattern of session ids.
    ``live``: it prints each count as it goes, for wait_seen() (read them: a full pipe stalls it)."""
    job = {"attach": attach_statement, "sessions": sessions, "total": total, "seconds": seconds,
           "interval": interval, "view": view, "live": live, "extensions": str(extensions) if extensions else None}
    analyst = subprocess.Popen([sys.executable, "-c", ANALYST, json.dumps(job)], text=True, env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert analyst.stdout is not None
    if analyst.stdout.readline() != "attached\n":
        _, err = analyst.communicate(timeout=30)
        raise AssertionError(f"the analyst did not attach: {err}")
    return analyst


def wait_seen(analyst: subprocess.Popen[str], count: int, timeout: float = 60) -> None:
    """Wait until the analyst has counted at least ``count`` rows (its live lines)."""
    assert analyst.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = analyst.stdout.readline()
        if not line:
            raise AssertionError("the analyst ended before it counted enough rows")
        if json.loads(line).get("count", -1) >= count:
            return
    raise AssertionError(f"the analyst did not count {count} rows within {timeout} s")


def analyst_result(analyst: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    """What the analyst saw: {"samples": [(at, count, distinct, ms), ...], "refused", "views"}."""
    out, err = analyst.communicate(timeout=timeout)
    assert analyst.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])
