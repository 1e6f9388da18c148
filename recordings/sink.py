"""The recording process: the DuckDB file or lake, the writer, and the analyst socket.

The gateway's event loop shares one GIL with everything else in its process. Building a
row (decoding bodies, redacting every secret, JSON) and DuckDB's commits took about
0.3 ms of CPU per flow on the writer thread, all of it competing with the proxy for the
GIL. So the gateway starts this process (``python -m recordings.sink FD``) and hands it
each flow's snapshot over a socket pair (:mod:`recordings.feed`); rows are built and
written here. It owns the recording: it recovers the previous run's unfinished flows from
the journal before it says ``ready``, runs :class:`recordings.writer.Writer` (and a lake's
maintenance), and serves ``<db>.sock`` (:mod:`recordings.control`), through which
``portcullis sql``, the review UI and replays read (:mod:`recordings.remote`).

Messages are pickled tuples (both ends are this code, over a private socket pair):
    gateway -> sink: ("config", dict), ("items", [item, ...]), ("configure", dict), ("stop",)
        an item is a flows row maker, ("e", maker) or ("p", function, args) for an event
        (its seq is given here, in arrival order) or ("b", n) for a barrier;
    sink -> gateway: ("ready", dict) | ("error", text), ("status", dict), ("barrier", n, ok),
        ("stopped", lost).
When the gateway's end closes (it exited, even by SIGKILL) the sink writes everything it
has received and exits: a flow the gateway handed over is not lost with the gateway.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import pickle
import signal
import sys
import threading
import time
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from recordings import control, writer
from recordings.journal import Journal
from recordings.maintenance import Maintenance
from recordings.recovery import recover
from recordings.store import PRIVATE_UMASK, Store, StoreError

log = logging.getLogger("portcullis.recorder")

STATUS_EVERY_S = 0.2
#: How long a restarted gateway's sink waits for the previous one to let go of the file.
OPEN_WAIT_S = 15.0


class Sink:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        self.store: Store | None = None
        self.writer: writer.Writer | None = None
        self.control: control.ControlServer | None = None
        self._done = threading.Event()

    def send(self, *message: Any) -> None:
        data = pickle.dumps(message)
        with self._send_lock:
            try:
                self.conn.send_bytes(data)
            except OSError:
                pass  # the gateway is gone; we finish writing and exit anyway

    def open(self, config: dict[str, Any]) -> dict[str, Any]:
        path = Path(config["db"])
        deadline = time.monotonic() + OPEN_WAIT_S
        # One recording process per --db: a killed gateway's may still be writing what it
        # was handed. Recovering the journal before that is committed would close those
        # flows as unfinished (a lake has no file lock to make us wait, so this does).
        self._lock_fd = _exclusive(path.parent / f"{path.name}.sink.lock", deadline)
        while True:
            try:
                store = Store(path, settings=config["settings"], limits=config["limits"],
                              lake=config.get("lake"), scope=config.get("scope"))
                break
            except StoreError as exc:
                # The previous gateway's sink may still be writing its last batch.
                if "in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        journal = Journal(path)
        cur = store.cursor()
        try:
            from_journal, closed = recover(store, cur, journal.entries())
            journal.close(delete=True)  # everything in it is in the recording now
            days = config.get("retain_days", 0)
            if days and store.lake is None:
                writer.retain(store, cur, days)
        except BaseException:
            store.close()
            raise
        finally:
            cur.close()
        self.store = store
        self.writer = writer.Writer(store, retain_days=0 if store.lake else config.get("retain_days", 0))
        if store.lake is not None:
            self.writer.maintenance = Maintenance(store, config.get("maintenance_s", 0),
                                                  config.get("retain_days", 0))
        self.writer.start()
        try:
            self.control = control.ControlServer(control.socket_path(path), store, self.health).start()
        except OSError as exc:
            log.error("recording: no analyst endpoint at %s (%s)", control.socket_path(path), exc)
        return {"previous_version": store.previous_version, "from_journal": from_journal,
                "closed": closed, "pid": os.getpid()}

    def health(self) -> dict[str, Any]:
        store, w = self.store, self.writer
        return {"db": str(store.path) if store else None,
                "lake": store.lake.describe() if store and store.lake else None,
                "recording": (w.failure or "ok") if w else "off",
                "rows_written": w.written if w else 0,
                "writer_cpu_s": round(w.cpu_seconds, 3) if w else 0,
                "sink_cpu_s": round(time.process_time(), 3), "sink_pid": os.getpid()}

    def status(self) -> dict[str, Any]:
        w = self.writer
        assert w is not None
        return {"failure": w.failure, "written": w.written, "dropped": w.dropped,
                "cpu_seconds": time.process_time()}

    def _report(self) -> None:
        last: dict[str, Any] | None = None
        while not self._done.wait(STATUS_EVERY_S):
            now = self.status()
            if now != last:
                self.send("status", now)
                last = now

    def serve(self) -> int:
        """Take items until the gateway says stop or goes away; returns rows lost."""
        assert self.writer is not None
        threading.Thread(target=self._report, name="portcullis-sink-status", daemon=True).start()
        while True:
            try:
                message = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                log.warning("recording: the gateway went away; writing what it sent, then exiting")
                break
            kind = message[0]
            if kind == "items":
                self._take(message[1])
            elif kind == "configure":
                self._configure(message[1])
            elif kind == "stop":
                break
        lost = self.writer.stop()
        self._done.set()
        self.send("status", self.status())
        return lost

    def _take(self, items: list[Any]) -> None:
        w = self.writer
        assert w is not None
        for item in items:
            if isinstance(item, tuple) and item and item[0] == "p":
                w.put_event(partial(item[1], *item[2]))
            elif isinstance(item, tuple) and item and item[0] == "e":
                w.put_event(item[1])
            elif isinstance(item, tuple) and item and item[0] == "b":
                w.barrier(partial(self._answer_barrier, item[1]))
            else:
                w.put_flow(item)

    def _answer_barrier(self, number: int, ok: bool) -> None:
        self.send("barrier", number, ok)

    def _configure(self, changes: dict[str, Any]) -> None:
        assert self.store is not None and self.writer is not None
        if "settings" in changes:
            self.store.configure(changes["settings"])
        if "limits" in changes:
            self.store.limits = changes["limits"]
        if "retain_days" in changes:
            if self.writer.maintenance is not None:
                self.writer.maintenance.retain_days = changes["retain_days"]
            else:
                self.writer.retain_days = changes["retain_days"]

    def close(self) -> None:
        if self.control is not None:
            self.control.stop()
        if self.store is not None:
            self.store.close()


def _exclusive(path: Path, deadline: float) -> int:
    """An flock held for this process's life; waits until ``deadline`` for a previous owner."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StoreError(f"{path.parent / path.name[:-len('.sink.lock')]} is in use by another "
                                 "gateway's recording process") from None
            time.sleep(0.05)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the gateway dies (the socket EOF also ends it)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="[recording %(asctime)s] %(message)s")
    # Everything this process creates holds recorded bodies: private from the first byte.
    os.umask(PRIVATE_UMASK)
    # Ctrl-C in the gateway's terminal reaches this process too: the gateway says when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM (the gateway died): finish like an EOF, writing what arrived.
    conn = Connection(int(args[0]))
    signal.signal(signal.SIGTERM, lambda *_: conn.close())
    _die_with_parent()
    sink = Sink(conn)
    try:
        config = pickle.loads(conn.recv_bytes())[1]
        ready = sink.open(config)
    except Exception as exc:  # noqa: BLE001 - the gateway reports it and refuses to start
        sink.send("error", str(exc))
        sink.close()
        return 1
    sink.send("ready", ready)
    lost = 0
    try:
        lost = sink.serve()
    finally:
        sink.close()
        sink.send("stopped", lost)
    return 0


if __name__ == "__main__":
    sys.exit(main())
