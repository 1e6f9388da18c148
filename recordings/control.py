"""The running gateway's local analyst API: HTTP over a Unix socket next to the database.

DuckDB lets one process hold a database file; while the gateway runs, another process
cannot even open it read-only. So ``portcullis sql`` and ``portcullis export`` talk to
the gateway through ``<db>.sock`` (mode 0600: only the gateway's own user can connect),
and open the file themselves when no gateway answers. Both paths run the same
:func:`answer`, so results do not depend on whether the gateway is up.

Routes (JSON in, JSON out):
    GET  /health                                   -> {"ok": true, "db": ..., "recording": ...}
    POST /query  {"sql": ..., "output": FILE?}     -> {"columns": [...], "rows": [[...]]}
                 (with "output": writes Parquet)   -> {"written": FILE, "rows": N}
    POST /export {"since": ..., "format": ..., "output": DIR} -> {"flows": N, "events": N, ...}
Errors: 400 {"error": "read_only" | "sql_error" | "bad_request", "message": ...}; a query
stopped by a limit (recordings/analyst.py): 408 query_timeout, 413 query_memory or
result_too_large, 499 query_cancelled (the client closed the socket while it ran).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import pickle
import select
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import partial
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb

from recordings import export as exporting
from recordings.analyst import LimitHit
from recordings.lake import Lake
from recordings.sqlguard import ReadOnlyViolation
from recordings.store import Store

log = logging.getLogger("portcullis.recorder")

#: With this environment variable set (and PYTHONTRACEMALLOC=1), GET /debug/tracemalloc
#: answers the Python allocations that grew most since the first call (bench/soak.py).
TRACEMALLOC_ENV = "PORTCULLIS_TRACEMALLOC"

#: Longest AF_UNIX path Linux accepts (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


def socket_path(db: str | Path) -> Path:
    """Where the gateway serving ``db`` listens, and where ``portcullis sql`` looks.

    ``<db>.sock`` next to the database when that fits AF_UNIX's 107 bytes; under a long
    HOME or confdir, a short per-user directory (``$XDG_RUNTIME_DIR/portcullis`` or
    ``/tmp/portcullis-<uid>``, mode 0700, ours alone) holding a name derived from a hash
    of the database's absolute path, so both sides find the same socket.
    """
    beside = Path(f"{db}.sock")
    if len(str(beside)) <= MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(str(Path(db).absolute()).encode()).hexdigest()[:24]
    return _private_dir() / f"{digest}.sock"


def _private_dir() -> Path:
    """A 0700 directory owned by this user with a short path; OSError if there is none."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "portcullis" if runtime and Path(runtime).is_dir() else Path(f"/tmp/portcullis-{os.getuid()}")
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(base)
    except OSError as exc:
        raise OSError(f"cannot create the short socket directory {base}: {exc}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise OSError(f"short socket directory {base} is not a private directory of this user "
                      "(mode 0700, owned by us): refusing to put the analyst socket there")
    return base


class RequestFailed(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message") or body.get("error") or f"HTTP {status}")
        self.status = status
        self.body = body


class NotRunning(Exception):
    """No gateway answers on the socket."""


def jsonable(value: Any) -> Any:
    """A JSON-safe rendering of a DuckDB value (timestamps ISO, blobs base64)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "base64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal | UUID | timedelta):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def answer(store: Store, route: str, payload: dict[str, Any],
           gone: Callable[[], bool] | None = None) -> tuple[int, dict[str, Any]]:
    """Serve one API call against ``store``: (HTTP status, JSON body).

    ``gone()`` says whether the client has left; a running query is then stopped.
    """
    try:
        if route == "/query":
            sql = payload.get("sql")
            if not isinstance(sql, str):
                return 400, {"error": "bad_request", "message": "'sql' must be a string"}
            if payload.get("output"):
                count = store.write_parquet(sql, _absolute(payload["output"]), gone)
                return 200, {"written": payload["output"], "rows": count}
            columns, rows = store.query(sql, payload.get("params"), gone)
            return 200, {"columns": columns, "rows": jsonable(rows)}
        if route == "/export":
            since = exporting.parse_since(str(payload.get("since", "1970-01-01")))
            result = exporting.export(store, since, str(payload.get("format", "parquet")),
                                      _absolute(payload.get("output")))
            return 200, result
    except LimitHit as exc:
        return exc.status, exc.as_json()
    except ReadOnlyViolation as exc:
        return 400, {"error": "read_only", "message": str(exc)}
    except (ValueError, TypeError) as exc:
        return 400, {"error": "bad_request", "message": str(exc)}
    except duckdb.Error as exc:
        return 400, {"error": "sql_error", "message": str(exc)}
    return 404, {"error": "not_found", "message": f"no route {route}"}


def _absolute(path: Any) -> Path:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError("'output' must be an absolute path")
    return Path(path)


#: How often the analyst socket's accept loop looks whether it is to stop.
STOP_POLL_S = 0.05


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, store: Store, health: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.store = store
        self.health = health
        if len(str(path)) > MAX_SOCKET_PATH:
            raise OSError(f"socket path too long for AF_UNIX ({len(str(path))} > {MAX_SOCKET_PATH})")
        _remove_stale(path)
        super().__init__(str(path), _Handler)
        # stop() waits for serve_forever to notice shutdown(), up to one poll interval:
        # socketserver's default 0.5 s was most of every gateway's stop.
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": STOP_POLL_S},
                                        name="portcullis-control", daemon=True)

    def server_bind(self) -> None:
        # Restrict before listen(): nobody can connect in between.
        super().server_bind()
        os.chmod(self.path, 0o600)

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def peer_gone(sock: socket.socket) -> bool:
    """True once the peer has closed its end (readable, and a peek reads nothing)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset, or already closed
        return True


def _remove_stale(path: Path) -> None:
    """A socket left by a killed gateway: remove it (the database lock proves it is dead)."""
    if path.exists() or path.is_symlink():
        path.unlink()


class _Handler(BaseHTTPRequestHandler):
    server: ControlServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("control: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path == "/health":
            self._send(200, {"ok": True, **self.server.health()})
        elif self.path == "/debug/tracemalloc" and os.environ.get(TRACEMALLOC_ENV):
            self._send(200, {"top": _tracemalloc_growth()})
        else:
            self._send(404, {"error": "not_found", "message": f"no route {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self._send(400, {"error": "bad_request", "message": str(exc)})
            return
        if self.path == "/native":
            self._native(payload)
            return
        status, body = answer(self.server.store, self.path, payload,
                              gone=partial(peer_gone, self.connection))
        if status == 499:
            return  # nobody is listening
        self._send(status, body)

    def _native(self, payload: dict[str, Any]) -> None:
        """The gateway's own reads (recordings/remote.py): Store methods, results pickled
        so DuckDB's values keep their Python types. Only the reading methods; the client
        leaving stops a query as on /query."""
        method, args = payload.get("method"), payload.get("args") or []
        if method not in NATIVE_METHODS or not isinstance(args, list):
            self._send(404, {"error": "not_found", "message": f"no method {method!r}"})
            return
        call = getattr(self.server.store, str(method))
        try:
            if method in ("query", "write_parquet"):
                result: Any = ("ok", call(*args, gone=partial(peer_gone, self.connection)))
            else:
                result = ("ok", call(*args))
        except LimitHit as exc:
            if exc.status == 499:
                return  # nobody is listening
            result = ("limit", exc.code, exc.status, exc.message)
        except ReadOnlyViolation as exc:
            result = ("read_only", str(exc))
        except duckdb.Error as exc:
            result = ("sql_error", str(exc))
        except (ValueError, TypeError, OSError) as exc:
            result = ("bad_request", str(exc))
        data = pickle.dumps(result)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-python-pickle")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


#: Store methods the gateway calls through /native (recordings/remote.py).
NATIVE_METHODS = frozenset({"query", "write_parquet", "copy_to", "flow", "events"})

_first_snapshot: list[Any] = []


def _tracemalloc_growth(top: int = 15) -> list[str]:
    """The lines whose allocations grew most since the first call (a debugging aid)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return ["tracemalloc is not tracing (start the gateway with PYTHONTRACEMALLOC=1)"]
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    if not _first_snapshot:
        _first_snapshot.append(snapshot)
    stats = snapshot.compare_to(_first_snapshot[0], "lineno")
    traced, _ = tracemalloc.get_traced_memory()
    return [f"traced total {traced / 2**20:.1f} MiB"] + [str(stat) for stat in stats[:top]]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def call(path: Path, route: str, payload: dict[str, Any] | None = None,
         timeout: float = 600) -> dict[str, Any]:
    """Call the running gateway. Raises NotRunning when none answers, RequestFailed on errors."""
    connection = _UnixConnection(path, timeout)
    try:
        try:
            connection.connect()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(str(exc)) from None
        if payload is None:
            connection.request("GET", route)
        else:
            connection.request("POST", route, json.dumps(payload),
                               {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = json.loads(response.read() or b"{}")
    finally:
        connection.close()
    if response.status != 200:
        raise RequestFailed(response.status, body)
    return body


def ask(db: str | Path, route: str, payload: dict[str, Any], lake: Lake | None = None) -> dict[str, Any]:
    """Ask the gateway recording to ``db``; without one running, open the file read-only.

    With a ``lake``, open it read-only here at once: a lake serves many processes, so the
    analyst's query runs in their own process, not in a gateway's.
    Raises RequestFailed (bad SQL, writes refused, ...) or StoreError (cannot open).
    """
    if lake is None:
        try:
            return call(socket_path(db), route, payload)
        except NotRunning:
            pass
    store = Store(db, read_only=True, lake=lake)
    try:
        status, body = answer(store, route, payload)
    finally:
        store.close()
    if status != 200:
        raise RequestFailed(status, body)
    return body
