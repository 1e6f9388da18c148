"""A real PostgreSQL server for the tests, one per session, in a temporary directory.

``postgres`` (session-scoped) yields a :class:`PostgresServer`: ``.dsn`` is a
``postgresql://`` URL for the superuser on 127.0.0.1, ``.stop()`` / ``.start()`` /
``.restart()`` take the server down and bring it back on the same port and data
directory mid-test (for the fail-closed and recovery tests), and ``.new_database()``
hands a test module its own empty database so modules do not see each other's rows.

PostgreSQL refuses to run as root, so as root every server command runs through
``runuser -u postgres --`` and the directory is chown'ed to that user. The binaries come
from ``PORTCULLIS_PG_BIN``, Debian's ``/usr/lib/postgresql/*/bin`` (newest first) or
PATH. Without them the fixture skips with a message, except under CI, where a missing
server is a failure (``.ci/run`` installs Debian's ``postgresql``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci import in_ci

_SERVER_USER = "postgres"


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates: list[str] = []
    if os.environ.get("PORTCULLIS_PG_BIN"):
        candidates.append(os.environ["PORTCULLIS_PG_BIN"])

    def version(path: str) -> int:
        try:
            return int(Path(path).parent.name)
        except ValueError:
            return 0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(os.path.realpath(on_path)).parent))
    for candidate in candidates:
        if all((Path(candidate) / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One postgres process on 127.0.0.1:port with its data and socket in ``root``."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{_SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", _SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}\n"
                               f"{self.log_tail()}")
        return done

    def init(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.root, _SERVER_USER, _SERVER_USER)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", _SERVER_USER,
                  "--no-sync", "-E", "UTF8", "--locale=C")
        return self

    def start(self) -> PostgresServer:
        options = (f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")
        self._wait_ready()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` closes sessions; ``immediate`` is a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)

    def restart(self) -> PostgresServer:
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not accept connections:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def new_database(self, prefix: str = "t") -> str:
        """Create an empty database and return its DSN."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the whole session (see the module docstring)."""
    bindir = find_bindir()
    if bindir is None:
        message = "no PostgreSQL server binaries (install Debian's postgresql or set PORTCULLIS_PG_BIN)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    # Not under pytest's basetemp: every pytest session (of any parallel run) resets
    # /tmp/pytest-of-<user> to 0700, which would cut the postgres user off mid-run.
    root = Path(tempfile.mkdtemp(prefix="portcullis-pg-"))
    server = PostgresServer(bindir, root).init().start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_dsn(postgres: PostgresServer) -> str:
    """An empty database of its own for each test module that asks."""
    return postgres.new_database()
