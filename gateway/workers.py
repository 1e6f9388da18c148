"""`portcullis run --workers N`: N gateway processes on one proxy address, and their supervisor.

Why processes: one mitmproxy master is one event loop under one GIL, so one core; a
second core needs a second process (docs/deploy.md). Each worker is a whole gateway
(gateway/server.py: its own mitmproxy master and make_addons()), started as
``python -m gateway.workers`` with its settings as JSON on stdin (never on the command
line, which other users can read), and listens on the same address with SO_REUSEPORT
(gateway/reuseport.py): the kernel spreads the agents' connections over the workers.

What the workers share, and how:
  * the CA and keys: the supervisor creates the CA in the confdir before any worker
    starts, so they never race to create two; the mask key file is created atomically
    (addons/masking/pseudonyms.py);
  * the rules, identities and reviewers files: every worker reads and watches them
    itself, so a rules edit reloads in every worker;
  * holds, votes, grants and reviewer sessions: only through the shared state
    (``--state postgresql://...``). Without it a hold taken by one worker would be
    invisible to the reviewers of another, so N > 1 without it is refused at start;
  * the review UI: served by worker 0 alone (one bind; it lists the cluster's holds from
    the shared state). The other workers know its address and refuse proxied requests to
    it like worker 0 does (review_ui/server_addon.SERVED_ELSEWHERE_ENV);
  * the recording: one embedded DuckDB file has one writer process, so N > 1 needs the
    lake (``--lake``), which every worker writes, or recording off (``--db ''``). With a
    lake, --db only places a gateway's crash journal and analyst socket, so worker i > 0
    gets its own sibling path (worker_db: ``portcullis.worker1.duckdb``); a worker that
    dies recovers its own journal when the supervisor restarts it.

Worker 0 starts first and alone: it creates or migrates the shared schemas (state, lake),
which two fresh processes must not race to do; then the others start together.
The supervisor prints worker 0's banner once every worker listens, prefixes every other
line of a worker's output with ``[worker i]``, restarts a worker that dies (at most
RESTART_BUDGET times a minute; the kernel meanwhile sends new connections to the others),
and on SIGTERM or SIGINT stops every worker the way one gateway stops (connections
closed, flows recorded) and exits 0 when they all did. If the supervisor itself is
killed, each worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addons.holds.pgaddon import is_postgres
from gateway.agent_env import ensure_ca
from gateway.server import WORKER_READY_MARK, StartupError, check_port_free, serve

#: The most workers `--workers` accepts (a guard against typos, not a tuned limit).
MAX_WORKERS = 64
#: Restarts of crashed workers allowed per minute before the supervisor gives up.
RESTART_BUDGET = 5
#: Seconds a worker has to stop after SIGTERM before it is killed.
STOP_GRACE_S = 20.0
#: Seconds every worker has to start listening.
START_TIMEOUT_S = 60.0
#: The longest line of a worker's output passed on whole.
LINE_LIMIT = 1 << 20
#: The first line of a gateway's banner (what scripts and tests wait for).
READY_LINE = "Portcullis gateway ready"
#: Environment of each worker: its index and the number of workers.
WORKER_INDEX_ENV = "PORTCULLIS_WORKER"
WORKER_COUNT_ENV = "PORTCULLIS_WORKERS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_workers(value: str) -> int:
    """``--workers``: a number from 1 to MAX_WORKERS, or ``auto`` (one per core)."""
    if value.strip().lower() == "auto":
        return min(MAX_WORKERS, available_cores())
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected a number of workers (1-{MAX_WORKERS}) or 'auto', got {value!r}")
    return int(value)


def shared_state_problem(options: dict[str, Any], count: int) -> str | None:
    """Why these settings cannot run ``count`` workers, or None."""
    if count <= 1:
        return None
    if not is_postgres(str(options.get("portcullis_state") or "").strip()):
        return (f"--workers {count} needs shared state: holds, votes, grants and reviewer sessions "
                "must be the same in every worker. Pass --state postgresql://USER@HOST/DB "
                "(docs/deploy.md), or run one worker")
    if options.get("portcullis_db") and not options.get("portcullis_lake"):
        return (f"--workers {count} cannot record into one DuckDB file (a DuckDB file has one writer "
                "process): record into the lake (--lake) or turn recording off (--db '')")
    return None


def worker_db(db: str, index: int) -> str:
    """Worker ``index``'s --db path: worker 0 keeps the operator's (so `portcullis sql --db`
    reaches it), the others a sibling, ``portcullis.duckdb`` -> ``portcullis.worker1.duckdb``."""
    if index == 0 or not db:
        return db
    path = Path(db)
    return str(path.with_name(f"{path.stem}.worker{index}{path.suffix}"))


def worker_options(options: dict[str, Any], index: int) -> dict[str, Any]:
    """The mitmproxy options of worker ``index``. With a lake, --db only places a gateway's
    journal and analyst socket (and scopes its crash recovery), so each worker has its own."""
    if not options.get("portcullis_lake"):
        return options
    return {**options, "portcullis_db": worker_db(str(options.get("portcullis_db") or ""), index)}


def reserve(host: str, port: int) -> socket.socket:
    """Hold the address for the workers while they start (seconds, for a Python process):
    a socket bound with SO_REUSEPORT but not listening takes no connections (only listening
    sockets join the kernel's reuse-port group), yet no other process can bind the port, and
    no outgoing connection is given it as its ephemeral port, which would make the workers'
    bind fail with EADDRINUSE. Kept for the whole run, so a restarted worker finds it free."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Worker:
    """One worker process and what the supervisor knows of it."""

    index: int
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    banner: list[str] = field(default_factory=list)
    relay: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Starts, watches and stops the workers of one `portcullis run --workers N`."""

    def __init__(self, listen: tuple[str, int], options: dict[str, Any], quiet: bool, count: int) -> None:
        self.listen = listen
        self.options = options
        self.quiet = quiet
        self.workers = [Worker(i) for i in range(count)]
        self.stopping = asyncio.Event()
        self.changed = asyncio.Event()  # a worker became ready or exited
        self.restarts: deque[float] = deque()
        self.serving = False

    # --- one worker ---------------------------------------------------------------------

    def config(self, worker: Worker) -> dict[str, Any]:
        return {"index": worker.index, "listen": list(self.listen), "options": worker_options(self.options, worker.index),
                "quiet": self.quiet}

    def environment(self, worker: Worker) -> dict[str, str]:
        from review_ui.server_addon import SERVED_ELSEWHERE_ENV

        env = {**os.environ, "PYTHONUNBUFFERED": "1", WORKER_INDEX_ENV: str(worker.index),
               WORKER_COUNT_ENV: str(len(self.workers))}
        env.pop(SERVED_ELSEWHERE_ENV, None)
        if worker.index > 0:
            env[SERVED_ELSEWHERE_ENV] = "1"  # worker 0 serves the review UI
        return env

    async def start(self, worker: Worker) -> None:
        worker.ready.clear()
        worker.banner = []
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.workers", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=self.environment(worker), limit=LINE_LIMIT)
        assert worker.process.stdin is not None
        worker.process.stdin.write(json.dumps(self.config(worker)).encode())
        await worker.process.stdin.drain()
        worker.process.stdin.close()
        worker.relay = asyncio.create_task(self._relay(worker, worker.process))

    async def _relay(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        """Pass the worker's output on; keep worker 0's banner; notice readiness and exit."""
        assert process.stdout is not None
        in_banner = False
        while True:
            try:
                line_bytes = await process.stdout.readline()
            except ValueError:  # a line longer than LINE_LIMIT: pass on what there is
                line_bytes = await process.stdout.read(LINE_LIMIT)
            if not line_bytes:
                break
            line = line_bytes.decode(errors="replace").rstrip("\n")
            if line.startswith(READY_LINE) and not worker.ready.is_set():
                in_banner = True
            if in_banner:
                if line.startswith(WORKER_READY_MARK):
                    in_banner = False
                    worker.ready.set()
                    self.changed.set()
                elif worker.index == 0:
                    worker.banner.append(line)
                continue
            print(f"[worker {worker.index}] {line}", flush=True)
        await process.wait()
        self.changed.set()

    # --- all of them ----------------------------------------------------------------------

    async def run(self) -> int:
        host, port = self.listen
        check_port_free(host, port)
        with reserve(host, port):
            return await self._run()

    async def _run(self) -> int:
        if confdir := self.options.get("confdir"):
            ensure_ca(confdir)  # once, before any worker could race to create it
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            # Worker 0 first, alone: it creates or migrates what the workers share (the state's
            # and the lake's schemas), which two fresh processes must not race to do.
            await self.start(self.workers[0])
            code = await self._wait_until_serving(self.workers[:1])
            if code is None:
                for worker in self.workers[1:]:
                    await self.start(worker)
                code = await self._wait_until_serving(self.workers)
            if code is None:
                self._print_banner()
                self.serving = True
                code = await self._watch()
        finally:
            stopped = await self._stop_all()
        return code if code else stopped

    async def _wait_until_serving(self, workers: list[Worker]) -> int | None:
        """None once each of ``workers`` listens; else the exit code to end with."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready.is_set() for w in workers):
            if self.stopping.is_set():
                return 0
            for worker in workers:
                if not worker.alive():
                    if worker.relay:
                        await worker.relay  # its last words (the startup error) are printed
                    print(f"portcullis: worker {worker.index} exited with code "
                          f"{worker.process.returncode if worker.process else '?'} while starting; "
                          "stopping the others", file=sys.stderr, flush=True)
                    return (worker.process.returncode if worker.process else 1) or 1
            if time.monotonic() > deadline:
                print(f"portcullis: the workers did not all start within {START_TIMEOUT_S:.0f} s",
                      file=sys.stderr, flush=True)
                return 1
            await self._changed_or_stopping(1.0)
        return None

    async def _watch(self) -> int:
        """Until a stop is asked: restart workers that die, within the budget."""
        while not self.stopping.is_set():
            await self._changed_or_stopping(5.0)
            for worker in self.workers:
                if worker.alive() or self.stopping.is_set():
                    continue
                if worker.relay:
                    await worker.relay
                now = time.monotonic()
                while self.restarts and now - self.restarts[0] > 60:
                    self.restarts.popleft()
                code = worker.process.returncode if worker.process else None
                if len(self.restarts) >= RESTART_BUDGET:
                    print(f"portcullis: worker {worker.index} exited with code {code}; {RESTART_BUDGET} "
                          "restarts in the last minute already, stopping", file=sys.stderr, flush=True)
                    return 1
                self.restarts.append(now)
                print(f"portcullis: worker {worker.index} (pid {worker.pid}) exited with code {code}; "
                      "restarting it", file=sys.stderr, flush=True)
                await self.start(worker)
        return 0

    async def _changed_or_stopping(self, timeout: float) -> None:
        waiters = [asyncio.ensure_future(self.changed.wait()), asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            self.changed.clear()

    async def _stop_all(self) -> int:
        """SIGTERM to every worker, SIGKILL after STOP_GRACE_S; 0 if each exited 0."""
        alive = [w for w in self.workers if w.alive()]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code = 0
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                returncode = await asyncio.wait_for(worker.process.wait(), STOP_GRACE_S)
            except TimeoutError:
                print(f"portcullis: worker {worker.index} did not stop within {STOP_GRACE_S:.0f} s; killing it",
                      file=sys.stderr, flush=True)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                returncode = await worker.process.wait()
            if worker.relay:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.relay, 5)
            if worker in alive and returncode not in (0, -signal.SIGTERM):
                code = code or returncode or 1
        if self.serving:
            print(f"portcullis: {len(self.workers)} workers stopped", flush=True)
        return code

    def _print_banner(self) -> None:
        banner = list(self.workers[0].banner) or [READY_LINE]
        pids = ", ".join(str(w.pid) for w in self.workers)
        line = (f"  workers:  {len(self.workers)} processes on this address (SO_REUSEPORT; pids {pids}); "
                "worker 0 serves the review UI")
        at = next((i + 1 for i, text in enumerate(banner) if text.startswith("  proxy:")), 1)
        banner.insert(at, line)
        print("\n".join(banner), flush=True)


async def supervise(listen: tuple[str, int], options: dict[str, Any], quiet: bool, count: int) -> int:
    """Run ``count`` workers until SIGINT/SIGTERM; the exit code."""
    if problem := shared_state_problem(options, count):
        raise StartupError(problem)
    return await Supervisor(listen, options, quiet, count).run()


# --- the worker's side ---------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux); else nothing."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> int:
    """A worker: its settings come as JSON on stdin (see Supervisor.config)."""
    config = json.loads(sys.stdin.read())
    _die_with_parent()
    host, port = config["listen"]
    try:
        return asyncio.run(serve((host, int(port)), config["options"], quiet=config["quiet"],
                                 worker=int(config["index"])))
    except StartupError as exc:
        print(f"portcullis: cannot start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(worker_main())
