"""Start gateways and CLI runs as forks of one prepared interpreter (tests only).

Why: the suite starts over a hundred gateways, and each new interpreter spent 0.8 s of
CPU importing mitmproxy, Flask, DuckDB, sqlglot and the rest before it did anything
(2026-12-04: 120 CPU-seconds of a 425-second run, on two cores; forked, a start costs
0.3 s and the 3.11 suite went from 3:47 to 3:23). The zygote is one
interpreter per test process that has imported those third-party modules; a gateway is
a fork of it that then runs ``python -m gateway`` exactly as a new interpreter would:
our own packages (``gateway``, ``addons``, ``recordings``, ``review_ui``) are imported
in the child, after its environment, working directory and argv are set, so settings
read at import see the test's environment. The child is a real process of its own: it
listens, records, spawns its recording process, and is signalled and killed by pid.

Which modules to import first is not listed by hand: at start the zygote forks a child
that imports what a gateway start imports, compiles the rules files under rules/ (a rule
kind's engine is imported when a rule uses it), and reports the third-party modules it
loaded.

A request (argv, environment, working directory as JSON, with the child's stdin, stdout
and stderr passed as file descriptors) arrives on a Unix socket; the reply on the same
connection is the child's pid, and later its exit code. ``ForkedProcess`` wraps that
connection in the part of ``subprocess.Popen``'s interface the tests use.

Not used (a new interpreter is started instead) when PORTCULLIS_TEST_FORK=0, under
coverage.py's subprocess measurement, or when a test's environment changes a PYTHON*
variable, which a fork could not honour.
"""

from __future__ import annotations

import array
import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

from gateway.settings import PROJECT_ROOT

#: Our packages: never imported by the zygote, always by each child.
OURS = ("gateway", "addons", "recordings", "review_ui", "rules", "tests", "bench")

#: Not imported before a fork: importing DuckDB starts a thread of its own, which a
#: forked child would lack (the child imports it, ~40 ms).
NOT_BEFORE_FORK = ("duckdb", "_duckdb")

#: What a gateway start imports (a child of the zygote imports these to learn the
#: third-party modules among them).
START_IMPORTS = ("gateway.cli", "gateway.commands.run", "gateway.server", "addons.portcullis",
                 "addons.schema", "review_ui", "recordings.writer", "recordings.store")

ZYGOTE = r"""
import array, importlib, json, os, selectors, signal, socket, sys, threading

OURS, NOT_BEFORE_FORK, START_IMPORTS, path = json.loads(sys.argv[1])

def ours(name):
    return name.split(".", 1)[0] in OURS or name == "__main__"

def os_threads():
    return len(os.listdir("/proc/self/task"))

# Learn what a start imports, in a throwaway child, so that the zygote itself never
# imports our packages (their import-time settings belong to each gateway's environment).
read_end, write_end = os.pipe()
learner = os.fork()
if learner == 0:
    os.close(read_end)
    for name in START_IMPORTS:
        importlib.import_module(name)
    from pathlib import Path
    from addons.policy.engine import load_policy
    for rules in sorted(Path("rules").rglob("*.yaml")):  # what compiling rules imports (sqlglot, ...)
        try:
            load_policy(rules)
        except Exception:
            pass
    names = [name for name in sys.modules
             if not ours(name) and name.split(".", 1)[0] not in NOT_BEFORE_FORK]
    os.write(write_end, json.dumps(names).encode())
    os._exit(0)
os.close(write_end)
with os.fdopen(read_end, "rb") as learned:
    names = json.loads(learned.read() or b"[]")
os.waitpid(learner, 0)
for name in names:
    try:
        importlib.import_module(name)
    except Exception:  # a module only importable in its parent's context; the child imports it
        pass
for name in [name for name in sys.modules if ours(name) and name != "__main__"]:
    del sys.modules[name]  # a third-party module that imported one of ours (an entry point)
# fork() copies only the calling thread: a library's own thread would be missing in the child.
assert threading.active_count() == 1 and os_threads() == 1, (threading.enumerate(), os_threads())

listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(path)
listener.listen(64)
wake_read, wake_write = os.pipe()
os.set_blocking(wake_read, False)
os.set_blocking(wake_write, False)
signal.set_wakeup_fd(wake_write)
signal.signal(signal.SIGCHLD, lambda *_: None)
children = {}
selector = selectors.DefaultSelector()
selector.register(listener, selectors.EVENT_READ)
selector.register(wake_read, selectors.EVENT_READ)
selector.register(sys.stdin, selectors.EVENT_READ)  # EOF: the test process is gone
print(len(names), flush=True)


def run_child(request, fds):
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    selector.close()
    listener.close()
    for connection in children.values():  # other gateways' connections
        connection.close()
    for fd in (wake_read, wake_write):
        os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", buffering=1 if unbuffered else -1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    if unbuffered:
        sys.stdout.reconfigure(write_through=True)
    sys.path[0] = request["cwd"]  # what `python -m` puts first
    sys.argv = request["argv"]
    import runpy
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    os._exit(code)


def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is not None:
            try:
                connection.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass
            connection.close()


while True:
    for key, _ in selector.select():
        if key.fileobj is sys.stdin:
            if not sys.stdin.buffer.read1(4096):
                sys.exit(0)
        elif key.fileobj == wake_read:
            try:
                while os.read(wake_read, 4096):
                    pass
            except BlockingIOError:
                pass
            reap()
        else:
            connection, _ = listener.accept()
            fds = array.array("i")
            message, ancillary, _, _ = connection.recvmsg(1 << 20, socket.CMSG_LEN(3 * fds.itemsize))
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            request = json.loads(message)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                connection.close()
                run_child(request, list(fds))
            for fd in fds:
                os.close(fd)
            children[pid] = connection
            connection.sendall(f"{pid}\n".encode())
"""


def wanted(env: dict[str, str]) -> bool:
    """Whether a process with this environment may be a fork of the zygote."""
    if os.environ.get("PORTCULLIS_TEST_FORK") == "0" or os.environ.get("COVERAGE_PROCESS_START"):
        return False
    return all(env.get(name) == os.environ.get(name)
               for name in {*env, *os.environ} if name.startswith("PYTHON") and name != "PYTHONUNBUFFERED")


class Zygote:
    """The prepared interpreter of this test process (started on first use)."""

    _lock = threading.Lock()
    _current: Zygote | None = None

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "zygote.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, json.dumps([OURS, NOT_BEFORE_FORK, START_IMPORTS, self.path])],
            cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if not ready.strip().isdigit():
            raise RuntimeError(f"zygote did not start (exit {self.process.poll()}): {ready!r}")

    @classmethod
    def get(cls) -> Zygote:
        with cls._lock:
            if cls._current is None or cls._current.process.poll() is not None:
                cls._current = Zygote(Path(tempfile.mkdtemp(prefix="portcullis-zygote-")))
                atexit.register(cls._current.stop)
            return cls._current

    def stop(self) -> None:
        """End the zygote (its children live on) and remove its socket."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(Path(self.path).parent, ignore_errors=True)

    def fork(self, module: str, args: list[str], env: dict[str, str], cwd: Path,
             stdio: tuple[int, int, int]) -> ForkedProcess:
        """``python -m module *args`` as a fork, with ``stdio`` (three file descriptors, which
        the caller still owns and closes) as its stdin, stdout and stderr."""
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            connection.connect(self.path)
            request = {"module": module, "argv": [sys.executable, *args], "env": env, "cwd": str(cwd)}
            connection.sendmsg([json.dumps(request).encode()],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", stdio).tobytes())])
            return ForkedProcess(connection, [sys.executable, "-m", module, *args])
        except BaseException:
            connection.close()
            raise

    def spawn(self, module: str, args: list[str], env: dict[str, str], cwd: Path) -> ForkedProcess:
        """A fork (see ``fork``) whose stdout and stderr are one pipe, ``.stdout`` (text)."""
        read_end, write_end = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            process = self.fork(module, args, env, cwd, (null, write_end, write_end))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
            os.close(null)
        process.stdout = open(read_end, encoding="utf-8", errors="replace")  # noqa: SIM115 (read until the child exits)
        return process


def run(module: str, args: list[str], *, env: dict[str, str] | None = None, cwd: Path = PROJECT_ROOT,
        timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([python, "-m", module, *args], capture_output=True, text=True, ...)``
    as a fork of the zygote (stdin: /dev/null); TimeoutExpired, the child killed, on timeout."""
    (out_read, out_write), (err_read, err_write) = os.pipe(), os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        process = Zygote.get().fork(module, args, dict(os.environ if env is None else env), cwd,
                                    (null, out_write, err_write))
    except BaseException:
        os.close(out_read)
        os.close(err_read)
        raise
    finally:
        for fd in (null, out_write, err_write):
            os.close(fd)
    output: dict[int, bytes] = {}

    def drain(fd: int) -> None:
        with open(fd, "rb") as stream:
            output[fd] = stream.read()

    readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in (out_read, err_read)]
    for reader in readers:
        reader.start()
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    for reader in readers:
        reader.join()
    return subprocess.CompletedProcess(process.args, code, output[out_read].decode(errors="replace"),
                                       output[err_read].decode(errors="replace"))


class ForkedProcess:
    """A zygote's child, as the tests use a ``subprocess.Popen``: pid, poll, wait, signals."""

    def __init__(self, connection: socket.socket, args: list[str]) -> None:
        self.args = args
        self.stdout: IO[str] | None = None
        self.stdin = None
        self.returncode: int | None = None
        self._connection = connection
        self._buffer = b""
        self.pid = int(self._read_line(timeout=30) or "0")
        if not self.pid:
            raise RuntimeError("the zygote did not fork")

    def _read_line(self, timeout: float | None) -> str | None:
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self._connection], [], [], timeout)
            if not ready:
                return None
            chunk = self._connection.recv(4096)
            if not chunk:
                raise RuntimeError("the zygote closed the connection without an exit code")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _exited(self, timeout: float | None) -> bool:
        if self.returncode is None:
            line = self._read_line(timeout)
            if line is None:
                return False
            self.returncode = int(line.split()[1])
            self._connection.close()
        return True

    def poll(self) -> int | None:
        self._exited(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
