"""The recording as the gateway's own code sees it when a separate process writes it.

The recording process (recordings/sink.py) owns the DuckDB file, so the review UI,
replays and the analyst API in the gateway read through it: :class:`RemoteStore` has the
reading half of :class:`recordings.store.Store` (``query``, ``write_parquet``,
``copy_to``, ``flow``, ``events``, and ``path``/``lake``/``scope``) and calls the sink's
``/native`` route on ``<db>.sock``. Results come back pickled, so timestamps, blobs and
decimals are the same Python values a local Store returns, and errors are raised as the
same exceptions (LimitHit, ReadOnlyViolation, duckdb.Error). A ``gone()`` that turns
True closes the socket, which stops the query in the sink (its watchdog sees the peer
leave), exactly as for ``portcullis sql``.
"""

from __future__ import annotations

import http.client
import json
import pickle
import select
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb

from recordings.analyst import DEFAULT_LIMITS, LimitHit, Limits
from recordings.control import socket_path
from recordings.lake import Lake
from recordings.sqlguard import ReadOnlyViolation
from recordings.store import StoreError

POLL_S = 0.05
CONNECT_TIMEOUT_S = 10.0


class RemoteStore:
    read_only = False

    def __init__(self, path: str | Path, lake: Lake | None = None, scope: str | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.lake = lake
        self.scope = scope
        self.limits = limits
        self.previous_version = 0

    # --- the Store API the gateway uses -----------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None,
              gone: Callable[[], bool] | None = None) -> tuple[list[str], list[tuple]]:
        columns, rows = self._call("query", [sql, _plain(params)], gone)
        return columns, [tuple(row) for row in rows]

    def write_parquet(self, sql: str, output: str | Path, gone: Callable[[], bool] | None = None) -> int:
        return self._call("write_parquet", [sql, str(output)], gone)

    def copy_to(self, select_sql: str, output: str | Path, fmt: str) -> int:
        return self._call("copy_to", [select_sql, str(output), fmt], None)

    def flow(self, flow_id: str) -> dict[str, Any] | None:
        return self._call("flow", [flow_id], None)

    def events(self, flow_id: str) -> list[dict[str, Any]]:
        return self._call("events", [flow_id], None)

    def configure(self, settings: Any) -> None:  # the sink applies it (recordings/feed.py)
        pass

    def close(self, checkpoint: bool = True) -> None:
        pass

    # --- transport ------------------------------------------------------------------

    def _call(self, method: str, args: list[Any], gone: Callable[[], bool] | None) -> Any:
        body = json.dumps({"method": method, "args": args}, default=str).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                sock.connect(str(socket_path(self.path)))
            except OSError as exc:
                raise StoreError(f"the recording process does not answer: {exc}") from None
            sock.sendall(b"POST /native HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            # Wait for the answer; the caller leaving (gone) hangs up, which stops the query.
            deadline_s = self.limits.timeout_s + 60
            waited = 0.0
            while not select.select([sock], [], [], POLL_S)[0]:
                waited += POLL_S
                if gone is not None and gone():
                    raise LimitHit("query_cancelled", 499, "the client went away; the query was stopped")
                if waited > deadline_s:
                    raise StoreError("the recording process did not answer in time")
            sock.settimeout(None)
            response = http.client.HTTPResponse(sock)
            response.begin()
            data = response.read()
        finally:
            sock.close()
        if response.status != 200:
            raise StoreError(f"the recording process answered {response.status}: {data[:200]!r}")
        outcome = pickle.loads(data)  # from our own sink, over a 0600 socket
        kind = outcome[0]
        if kind == "ok":
            return outcome[1]
        if kind == "limit":
            raise LimitHit(outcome[1], outcome[2], outcome[3])
        if kind == "read_only":
            raise ReadOnlyViolation(outcome[1])
        if kind == "sql_error":
            raise duckdb.Error(outcome[1])
        raise ValueError(outcome[1])


def _plain(params: Sequence[Any] | dict[str, Any] | None) -> Any:
    if params is None or isinstance(params, dict):
        return params
    return list(params)
