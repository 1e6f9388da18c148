"""The recording as a DuckLake: one set of tables that many processes write and read at once.

A DuckDB file admits one process: while the gateway records, nobody else can open it,
not even read-only. DuckLake keeps the same tables as Parquet files plus a catalog in a
database that does handle many processes, and each reader sees a consistent snapshot:

* a **local lake** (``--lake DIR``): the catalog is ``DIR/catalog.sqlite`` (SQLite in WAL
  mode: readers never block the writer, nor the writer them) and the data files are in
  ``DIR/data/``. No server; an analyst's own DuckDB attaches it read-only while the
  gateway writes.
* a **shared lake** (``--lake postgresql://...``): the catalog is in PostgreSQL (15+), the
  data files in ``--lake-data`` (a directory every gateway reaches, or ``s3://bucket/
  prefix``). Every gateway writes its flows and events into the same tables; PostgreSQL
  orders the commits.

Small commits are inlined into the catalog (up to ``INLINE_ROWS`` rows per commit) rather
than leaving one Parquet file each; :mod:`recordings.maintenance` flushes them into files,
merges small files and applies retention, one process at a time.

The analyst's one statement (``portcullis sql --attach`` prints it for a lake)::

    ATTACH 'ducklake:sqlite:/srv/portcullis/recording.lake/catalog.sqlite' AS rec (READ_ONLY);
    ATTACH 'ducklake:postgres:postgresql://reader@db/portcullis' AS rec (READ_ONLY);

then ``SELECT ... FROM rec.flows`` (the views too: ``FROM rec.blocked_by_rule``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from recordings import extensions

#: Commits of up to this many rows per table go into the catalog instead of a new file:
#: a quiet gateway (a few flows per batch) leaves no trail of tiny Parquet files, while a
#: busy one's batches (hundreds of rows) go straight to Parquet. Inlining costs the
#: recording process per row: at 2,000 (every batch inlined) it spent 0.63 ms (local
#: catalog) and 0.81 ms (PostgreSQL) of CPU per flow against 0.21 ms for a DuckDB file;
#: at 100, 0.39 and 0.32 ms (bench/cpusplit.py --lake; docs/performance.md).
INLINE_ROWS = 100
ALIAS = "lake"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
#: S3 settings are read from these environment variables (docs/recording.md, "S3").
S3_ENV = {"KEY_ID": "AWS_ACCESS_KEY_ID", "SECRET": "AWS_SECRET_ACCESS_KEY",
          "SESSION_TOKEN": "AWS_SESSION_TOKEN", "REGION": "AWS_REGION", "ENDPOINT": "PORTCULLIS_S3_ENDPOINT",
          "URL_STYLE": "PORTCULLIS_S3_URL_STYLE", "USE_SSL": "PORTCULLIS_S3_USE_SSL"}


#: The first-time setup's PostgreSQL advisory lock key (not maintenance's: a start must
#: not wait for a compaction round). Advisory locks are per database, so per lake.
SETUP_KEY = 7_318_201_119
#: How long a starting gateway waits for another's setup before it gives up (fails closed).
SETUP_WAIT_S = 120.0


class LakeError(Exception):
    """The lake's settings are wrong or its catalog cannot be reached; the message says why."""


@dataclass(frozen=True)
class Lake:
    """Where a lake's catalog and data files are (see the module docstring)."""

    catalog: str  # a postgresql:// URL, or a local directory
    data: str = ""  # data files: a directory or s3://...; a local lake defaults to DIR/data

    @classmethod
    def parse(cls, value: str, data: str = "", reading: bool = False) -> Lake:
        """``reading``: for a reader, which finds the data files in the catalog."""
        value = value.strip()
        if not value:
            raise LakeError("the lake is empty")
        if value.startswith(POSTGRES_PREFIXES):
            if reading and not data:
                return cls(value, "")
            if not data:
                raise LakeError("a lake with its catalog in PostgreSQL needs --lake-data "
                                "(a directory every gateway reaches, or s3://bucket/prefix)")
            return cls(value, _data_path(data))
        root = Path(value).expanduser().resolve()
        return cls(str(root), _data_path(data) if data else str(root / "data") + "/")

    @property
    def shared(self) -> bool:
        return self.catalog.startswith(POSTGRES_PREFIXES)

    @property
    def on_s3(self) -> bool:
        return self.data.startswith("s3://")

    @property
    def catalog_file(self) -> Path | None:
        return None if self.shared else Path(self.catalog) / "catalog.sqlite"

    @property
    def extensions(self) -> tuple[str, ...]:
        names = ("ducklake", "postgres" if self.shared else "sqlite")
        return (*names, "httpfs") if self.on_s3 else names

    @property
    def uri(self) -> str:
        """The ATTACH target (no secrets beyond what the operator put into the URL)."""
        return f"ducklake:postgres:{self.catalog}" if self.shared else f"ducklake:sqlite:{self.catalog_file}"

    def attach_statement(self, alias: str = "rec") -> str:
        """The analyst's one statement."""
        return f"ATTACH '{_sql(self.uri)}' AS {alias} (READ_ONLY)"

    def local_directories(self) -> list[str]:
        """Where this lake's own files are (for allowed_directories): its data directory
        or S3 prefix (a writer's commits write Parquet files there; with external access
        off, DuckDB refuses any path not listed) and the catalog's directory."""
        found = [self.data] if self.data else []
        if self.catalog_file is not None:
            found.append(str(self.catalog_file.parent) + "/")
        return found

    def describe(self) -> str:
        """For banners and logs: the catalog without a password."""
        if not self.shared:
            return f"lake {self.catalog}"
        from urllib.parse import urlsplit

        parts = urlsplit(self.catalog)
        host = parts.hostname or "localhost"
        return f"lake postgresql://{host}{':' + str(parts.port) if parts.port else ''}{parts.path} -> {self.data}"


def _data_path(value: str) -> str:
    if value.startswith("s3://"):
        return value if value.endswith("/") else value + "/"
    return str(Path(value).expanduser().resolve()) + "/"


def extension_directory(near: Path, names: tuple[str, ...] = ("ducklake", "sqlite", "postgres")) -> Path:
    """A private extension directory with the wheels' binaries (recordings.extensions):
    ``names`` are those the lake loads (``Lake.extensions``: httpfs too for S3)."""
    try:
        return extensions.install(near, tuple(dict.fromkeys(("ducklake", "sqlite", "postgres", *names))))
    except extensions.MissingExtension as exc:
        raise LakeError(str(exc)) from None
    except OSError as exc:
        raise LakeError(f"cannot prepare DuckDB's extensions in {near}: {exc}") from None


@contextlib.contextmanager
def setup_lock(lake: Lake, wait_s: float = SETUP_WAIT_S) -> Iterator[None]:
    """Held while a writer attaches, creates and migrates the lake: one process at a time.

    On the first ATTACH of an empty catalog DuckLake creates its ``ducklake_*`` tables,
    and then the recording's migrations create theirs; two gateways starting together
    did both at once and one failed (PostgreSQL: ``duplicate key value violates unique
    constraint "pg_type_typname_nsp_index"``; SQLite: ``database is locked``). So a
    writer's open runs under this lock. For a PostgreSQL catalog it is a session
    advisory lock (``pg_advisory_lock(SETUP_KEY)`` on a psycopg connection of its own,
    with ``lock_timeout``: a gateway killed while holding it ends its session and the
    lock with it); for a local lake an ``flock`` on ``DIR/setup.lock`` (released by the
    kernel when the process dies). Every start takes it, not only the first: whether
    the catalog is new is only known after the ATTACH it must protect, and the later
    starts wait only for one another's short open. Readers do not take it.
    """
    if lake.shared:
        import psycopg

        try:
            session = psycopg.connect(lake.catalog, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise LakeError(f"cannot take the setup lock of the {lake.describe()}: "
                            f"{str(exc).strip().splitlines()[0]}") from None
        with session:
            try:
                session.execute(f"SET lock_timeout = '{int(wait_s * 1000)}ms'")
                session.execute("SELECT pg_advisory_lock(%s)", [SETUP_KEY])
            except psycopg.Error as exc:
                raise LakeError(f"cannot take the setup lock of the {lake.describe()} (another gateway "
                                f"still setting it up?): {str(exc).strip().splitlines()[0]}") from None
            try:
                yield
            finally:
                with contextlib.suppress(psycopg.Error):
                    session.execute("SELECT pg_advisory_unlock(%s)", [SETUP_KEY])
        return
    try:
        Path(lake.catalog).mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(Path(lake.catalog) / "setup.lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        raise LakeError(f"cannot take the setup lock of the {lake.describe()}: {exc}") from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LakeError(f"cannot take the setup lock of the {lake.describe()}: another "
                                    f"process held it for {wait_s:.0f} s") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def prepare(lake: Lake) -> None:
    """Create a local lake's directories and its catalog in WAL mode (once, persistent)."""
    if lake.shared:
        if not lake.on_s3:
            Path(lake.data).mkdir(mode=0o700, parents=True, exist_ok=True)
        return
    Path(lake.catalog).mkdir(mode=0o700, parents=True, exist_ok=True)
    Path(lake.data).mkdir(mode=0o700, parents=True, exist_ok=True)
    assert lake.catalog_file is not None
    connection = sqlite3.connect(lake.catalog_file, timeout=10)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    # Made under umask 077 (the recording process's), so private from the first byte;
    # a lake an older version or another umask left readable is tightened here.
    catalog = lake.catalog_file
    for path in (Path(lake.catalog), Path(lake.data), catalog,
                 catalog.with_name(catalog.name + "-wal"), catalog.with_name(catalog.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, mode & (0o700 if path.is_dir() else 0o600))


def attach(con: duckdb.DuckDBPyConnection, lake: Lake, read_only: bool, uri: str | None = None) -> None:
    """Load the extensions, set up S3 if needed, ATTACH the lake as ``lake`` and USE it
    (``uri``: the ATTACH target if not ``lake.uri``, e.g. from :func:`without_password`)."""
    try:
        extensions.load(con, lake.extensions)
    except duckdb.Error as exc:
        raise LakeError(f"cannot load DuckDB's lake extensions: {exc}") from None
    if lake.on_s3:
        _s3_secret(con)
    options = [] if read_only else [f"DATA_PATH '{_sql(lake.data)}'", f"DATA_INLINING_ROW_LIMIT {INLINE_ROWS}"]
    if read_only:
        options.append("READ_ONLY")
    try:
        con.execute(f"ATTACH '{_sql(uri or lake.uri)}' AS {ALIAS} ({', '.join(options)})")
        con.execute(f"USE {ALIAS}")
    except duckdb.Error as exc:
        raise LakeError(f"cannot attach {lake.describe()}: {str(exc).splitlines()[0]}") from None


#: httpfs copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (and the
#: region) from the environment into these settings when it loads, where any SELECT reads
#: them (``current_setting('s3_secret_access_key')``, ``duckdb_settings()``): the SQL page
#: would show the gateway's S3 key. The secret carries them instead; these are emptied.
S3_CREDENTIAL_SETTINGS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token")


class PassFile:
    """libpq's password file for a lake catalog, with no name on disk where Linux allows.

    libpq reads a password only from a file it opens by path (``passfile=``), on every new
    connection. A named file in /tmp outlived a recording process that was killed
    (SIGKILL runs no cleanup): the catalog password at rest. On Linux the file is made
    with ``O_TMPFILE`` (it never has a name) and libpq is given ``/proc/self/fd/N``,
    which only this process resolves, to a file that is gone when the process is.
    Elsewhere (or on a filesystem without ``O_TMPFILE``) it is a 0600 file in a 0700
    directory of its own, removed by :meth:`close`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory  # the fallback's; its parent holds the unnamed file too
        self.path: Path | None = None
        self._fd: int | None = None

    def write(self, text: str) -> Path:
        self.close()
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        unnamed = getattr(os, "O_TMPFILE", 0)
        if unnamed and Path("/proc/self/fd").is_dir():
            try:
                fd = os.open(self.directory.parent, unnamed | os.O_RDWR, 0o600)
            except OSError:
                fd = None  # no O_TMPFILE on this filesystem: a named file
            if fd is not None:
                os.fchmod(fd, 0o600)
                os.write(fd, text.encode())
                self._fd, self.path = fd, Path(f"/proc/self/fd/{fd}")
                return self.path
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / "pgpass"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(path, 0o600)
        self.path = path
        return path

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        elif self.path is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.path = None


def without_password(lake: Lake, passfile: PassFile) -> str:
    """The ATTACH target with the catalog URL's password moved into ``passfile``.

    DuckDB shows every attached database's path to any SELECT (``duckdb_databases()``,
    and ``duckdb_settings()``: the path is added to ``allowed_paths``), so a password in
    the URL was one query away for every analyst on the SQL page. libpq reads it from a
    password file named in the URL instead (``passfile=``; the path is shown, the file
    is outside every directory the confined DuckDB may read). Returns ``lake.uri`` when
    there is no password. The caller closes ``passfile`` when it closes the lake.
    """
    from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

    if not lake.shared:
        return lake.uri
    parts = urlsplit(lake.catalog)
    if parts.password is None:
        return lake.uri
    password = unquote(parts.password).replace("\\", "\\\\").replace(":", "\\:")
    path = passfile.write(f"*:*:*:*:{password}\n")
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    netloc = f"{user}@{host}" if user else host
    query = urlencode([*[(k, v) for k, v in parse_qsl(parts.query) if k != "passfile"], ("passfile", str(path))])
    return f"ducklake:postgres:{urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))}"


def _s3_secret(con: duckdb.DuckDBPyConnection) -> None:
    """An S3 secret from the environment (S3_ENV), in memory only (not PERSISTENT); the
    credential settings httpfs filled from the same environment are emptied."""
    values = {key: os.environ[name] for key, name in S3_ENV.items() if os.environ.get(name)}
    if values:
        body = ", ".join(f"{key} '{_sql(value)}'" for key, value in values.items())
        con.execute(f"CREATE OR REPLACE SECRET portcullis_lake_s3 (TYPE s3, {body})")
    for name in S3_CREDENTIAL_SETTINGS:
        con.execute(f"SET GLOBAL {name} = ''")


def _sql(value: str | Path) -> str:
    return str(value).replace("'", "''")
