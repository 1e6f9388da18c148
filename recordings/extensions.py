"""Load DuckDB's ducklake, sqlite and postgres extensions from their PyPI wheels, offline.

DuckDB installs extensions from its repository over the network; Portcullis pins duckdb
together with the ``duckdb-extension-<name>`` wheels built for that release (see
pyproject.toml), which ship the binary as ``duckdb_extension_<name>/extensions/v<ver>/
<name>.duckdb_extension``. Loading that file by path works, except that DuckDB derives an
extension's entry point from the file name, and the sqlite and postgres binaries are
really ``sqlite_scanner`` and ``postgres_scanner``. So :func:`install` links each binary
under its canonical name into an extension directory laid out as DuckDB expects
(``v<ver>/<platform>/<canonical>.duckdb_extension``); a connection whose
``extension_directory`` is that directory then ``LOAD``s and autoloads them by name, e.g.
when DuckLake attaches its catalog. ``portcullis sql --attach`` installs them into the
analyst's own DuckDB extension directory the same way, so their ``ATTACH`` works offline.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import duckdb

#: Wheel name -> the extension's canonical name (its entry point's prefix).
CANONICAL = {"ducklake": "ducklake", "sqlite": "sqlite_scanner", "postgres": "postgres_scanner",
             "httpfs": "httpfs"}


class MissingExtension(Exception):
    """An extension's wheel is not installed; the message names the package."""


def wheel_binary(name: str) -> Path | None:
    """The extension binary shipped by the ``duckdb-extension-<name>`` wheel, if installed."""
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = Path(location) / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        if found.is_file():
            return found
    return None


def platform() -> str:
    row = duckdb.connect().execute("PRAGMA platform").fetchone()
    return str(row[0]) if row else "linux_amd64"


def install(directory: str | Path, names: tuple[str, ...] = ("ducklake", "sqlite", "postgres")) -> Path:
    """Link the wheels' binaries into ``directory`` (DuckDB's layout); returns ``directory``.

    Raises MissingExtension for a wheel that is not installed (httpfs is optional: S3).
    """
    root = Path(directory)
    target = root / f"v{duckdb.__version__}" / platform()
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        binary = wheel_binary(name)
        if binary is None:
            raise MissingExtension(f"the DuckDB {name} extension is not installed "
                                   f"(pip install duckdb-extension-{name}=={duckdb.__version__})")
        link = target / f"{CANONICAL[name]}.duckdb_extension"
        if link.is_symlink() and os.readlink(link) == str(binary):
            continue
        temporary = link.with_name(f".{link.name}.{os.getpid()}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(binary)
        os.replace(temporary, link)  # atomic: another process may be loading it now
    return root


def load(con: duckdb.DuckDBPyConnection, names: tuple[str, ...]) -> None:
    """LOAD each extension by name (the connection's extension_directory has them)."""
    for name in names:
        con.execute(f"LOAD {CANONICAL[name]}")
