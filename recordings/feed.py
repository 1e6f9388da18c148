"""The gateway's end of the recording process (recordings/sink.py): queue, batch, send.

Same interface as :class:`recordings.writer.Writer` for the recorder addon: the event
loop calls ``put_flow`` / ``put_event`` / ``barrier`` (a deque append each), and one
thread sends what is queued every ``batch_seconds`` (or at ``batch_rows`` items, or at a
barrier) as one pickled message. Building rows and writing them happen in the sink, so
the gateway's share of recording is the snapshot, the append and one pickle per flow.

``failure`` mirrors the sink's writer (its status messages) and becomes "the recording
process exited" if the sink dies; barriers are then answered False, so the gateway fails
closed as it does when a commit fails.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from recordings.store import StoreError

log = logging.getLogger("portcullis.recorder")

#: How long the sink may take to open the recording and recover the journal.
READY_TIMEOUT_S = 120.0


class Feed:
    def __init__(self, config: dict[str, Any], batch_rows: int = 500, batch_seconds: float = 0.1) -> None:
        self.config = config
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.failure: str | None = None
        self.written = 0
        self.dropped = 0
        self.cpu_seconds = 0.0  # the sink process's CPU (its status messages)
        self.ready: dict[str, Any] = {}
        self.maintenance = None  # the sink runs a lake's maintenance
        self._retain_days = int(config.get("retain_days", 0))
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._barriers: dict[int, Callable[[bool], None]] = {}
        self._numbers = itertools.count(1)
        self._stopping = False
        self._stopped = threading.Event()
        self._lost: int | None = None
        self._conn: Connection | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._sender = threading.Thread(target=self._send_loop, name="portcullis-feed", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name="portcullis-feed-in", daemon=True)

    @property
    def healthy(self) -> bool:
        return self.failure is None

    @property
    def retain_days(self) -> int:
        return self._retain_days

    @retain_days.setter
    def retain_days(self, days: int) -> None:
        self._retain_days = days
        self.configure(retain_days=days)

    # --- lifecycle ----------------------------------------------------------------

    @staticmethod
    def spawn() -> tuple[subprocess.Popen[bytes], Connection]:
        """Start a recording process that waits for its config. The gateway does this as
        it loads, so the process's imports (DuckDB) overlap with mitmproxy's start."""
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "recordings.sink", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env, cwd=str(Path(__file__).resolve().parent.parent),
                stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        return process, Connection(ours.detach())

    def start(self, spawned: tuple[subprocess.Popen[bytes], Connection] | None = None) -> None:
        """Start the sink (or use ``spawned``) and wait until it has opened the recording
        and recovered it."""
        self.process, self._conn = spawned if spawned is not None else self.spawn()
        try:
            self._conn.send_bytes(pickle.dumps(("config", self.config)))
        except OSError:
            self._kill()
            raise StoreError("the recording process exited before it was configured") from None
        if not self._conn.poll(READY_TIMEOUT_S):
            self._kill()
            raise StoreError("the recording process did not start in time")
        try:
            message = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            self._kill()
            raise StoreError("the recording process exited while opening the recording") from None
        if message[0] != "ready":
            self._kill()
            raise StoreError(str(message[1]))
        self.ready = message[1]
        self._sender.start()
        self._receiver.start()

    def stop(self, timeout: float = 30) -> int:
        """Send what is queued, let the sink write it and exit; returns rows lost."""
        if self.process is None:
            return 0
        if self._sender.is_alive():
            self._stopping = True
            self._wake.set()
            self._sender.join(timeout)
        self._stopped.wait(timeout)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
        lost = self._lost if self._lost is not None else len(self._queue)
        if lost:
            log.error("recording: %d rows could not be written before exit (%s)", lost, self.failure)
        return lost

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    # --- called from the event loop (any thread) ------------------------------------

    def put_flow(self, make_row: Any) -> None:
        self._queue.append(make_row)
        if len(self._queue) >= self.batch_rows and not self._wake.is_set():
            self._wake.set()  # once: setting an Event takes a lock and wakes the sender

    def put_event(self, make_row: Any) -> None:
        # A partial travels as (function, args): pickling a partial object costs 4x more.
        if isinstance(make_row, partial) and not make_row.keywords:
            self._queue.append(("p", make_row.func, make_row.args))
        else:
            self._queue.append(("e", make_row))
        if len(self._queue) >= self.batch_rows and not self._wake.is_set():
            self._wake.set()

    def put_call(self, func: Callable[..., Any], args: tuple) -> None:
        """An event row to be built in the sink as ``func(*args, seq)``: what put_event
        does with a partial, without making one (the recorder calls this per event)."""
        queue = self._queue
        queue.append(("p", func, args))
        if len(queue) >= self.batch_rows and not self._wake.is_set():
            self._wake.set()

    def barrier(self, callback: Callable[[bool], None]) -> None:
        if not self.healthy and self._conn is None:
            callback(False)
            return
        number = next(self._numbers)
        self._barriers[number] = callback
        self._queue.append(("b", number))
        self._wake.set()

    def configure(self, **changes: Any) -> None:
        self._queue.append(("configure", changes))
        self._wake.set()

    # --- threads ------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            if not self._stopping:
                self._wake.wait(self.batch_seconds)
            self._wake.clear()
            items: list[Any] = []
            while True:
                try:
                    item = self._queue.popleft()
                except IndexError:
                    break
                if isinstance(item, tuple) and item and item[0] == "configure":
                    self._flush(items)
                    items = []
                    self._send(("configure", item[1]))
                else:
                    items.append(item)
            self._flush(items)
            if self._stopping:
                self._send(("stop",))
                return

    def _flush(self, items: list[Any]) -> None:
        if not items:
            return
        try:
            data = pickle.dumps(("items", items), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - one odd event detail must not lose the batch
            data = pickle.dumps(("items", [_portable(item) for item in items]),
                                protocol=pickle.HIGHEST_PROTOCOL)
        self._send_bytes(data)

    def _send(self, message: tuple) -> None:
        self._send_bytes(pickle.dumps(message))

    def _send_bytes(self, data: bytes) -> None:
        if self._conn is None:
            return
        try:
            self._conn.send_bytes(data)
        except OSError as exc:
            self._gone(f"the recording process exited ({exc})")

    def _receive_loop(self) -> None:
        assert self._conn is not None
        while True:
            try:
                message = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                if not self._stopping:
                    self._gone("the recording process exited")
                self._stopped.set()
                return
            kind = message[0]
            if kind == "status":
                status = message[1]
                if status["failure"] is None and self.failure is not None:
                    log.warning("recording works again")
                self.failure = status["failure"]
                self.written, self.dropped = status["written"], status["dropped"]
                self.cpu_seconds = status["cpu_seconds"]
            elif kind == "barrier":
                self._answer(message[1], message[2])
            elif kind == "stopped":
                self._lost = message[1]
                self._stopped.set()

    def _answer(self, number: int, ok: bool) -> None:
        callback = self._barriers.pop(number, None)
        if callback is None:
            return
        try:
            callback(ok)
        except Exception:  # noqa: BLE001 - a waiter's bug must not stop the feed
            log.exception("recording: barrier callback failed")

    def _gone(self, why: str) -> None:
        if self.failure is None or "exited" not in self.failure:
            log.error("recording failed: %s", why)
        self.failure = why
        for number in list(self._barriers):
            self._answer(number, False)


def _portable(item: Any) -> Any:
    """An item that pickles: an event whose detail does not is built here instead."""
    try:
        pickle.dumps(item)
        return item
    except Exception:  # noqa: BLE001
        if isinstance(item, tuple) and item and item[0] == "e":
            return ("e", _Built(item[1]))
        if isinstance(item, tuple) and item and item[0] == "p":
            return ("e", _Built(partial(item[1], *item[2])))
        raise


class _Built:
    """An event row built in the gateway (its detail would not pickle); seq comes later."""

    def __init__(self, make: Callable[[int], dict[str, Any]]) -> None:
        self.row = make(0)

    def __call__(self, seq: int) -> dict[str, Any]:
        return {**self.row, "seq": seq}
