"""portcullis sql "SELECT ...": query the recording, read-only, while the gateway runs or not.

    portcullis sql "SELECT decision, count(*) FROM flows GROUP BY ALL"
    portcullis sql --format csv --output blocked.csv "SELECT * FROM blocked_by_rule"
    portcullis sql --format parquet --output flows.parquet "FROM flows"
    portcullis sql --lake recordings/portcullis.lake "FROM flows LIMIT 5"
    portcullis sql --lake postgresql://reader@db/portcullis "SELECT count(*) FROM flows"
    portcullis sql --attach                                     # your own DuckDB's ATTACH

Without --db and --lake this reads the default recording: `portcullis run`'s default lake
(recordings/portcullis.lake in a clone). A DuckDB file (--db): a running gateway answers
through its socket (<db>.sock); otherwise the file is opened read-only. A lake is opened
read-only in this process, whatever gateways write it. Statements that write are refused. See docs/recording.md for the schema.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway import settings
from recordings import extensions
from recordings.control import RequestFailed, ask
from recordings.lake import Lake, LakeError
from recordings.results import render
from recordings.store import StoreError

FORMATS = ["table", "csv", "json", "parquet"]  # parquet: written by the store, not rendered
#: DuckDB's own default extension directory: where a plain `duckdb` looks for them.
DUCKDB_HOME_EXTENSIONS = Path("~/.duckdb/extensions")


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=str(settings.DEFAULT_DB), action=settings.Given,
                        help=f"the recording (default: {settings.DEFAULT_DB})")
    parser.add_argument("--lake", metavar="DIR|URL", default="",
                        help="read this lake (as given to portcullis run --lake) instead of --db; "
                             "with neither, the default recording (portcullis run's default lake "
                             "when it exists, else the --db file)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sql", help="query the recording (read-only)", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_db_argument(parser)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument("--attach", action="store_true",
                        help="print the one ATTACH statement for your own DuckDB (the default lake, or --lake) and "
                             "link the DuckDB extensions it needs into ~/.duckdb/extensions")
    parser.add_argument("query", metavar="SQL", nargs="?", help="one read-only SQL statement")
    parser.set_defaults(handler=handle)


def lake_argument(args: argparse.Namespace, command: str, attach: bool = False) -> Lake | None | bool:
    """The --lake, None without one, False (after printing why) when it is wrong. With
    neither --lake nor --db: the default lake (settings.DEFAULT_LAKE) once a gateway has
    created it (for ``attach``, always: it is where the default gateway records)."""
    if not args.lake:
        default = Lake.parse(str(settings.DEFAULT_LAKE), reading=True)
        if settings.given(args, "db") or not (attach or (default.catalog_file and default.catalog_file.is_file())):
            return None
        return default
    try:
        # Readers find the data files in the catalog; --lake-data only matters to writers.
        return Lake.parse(args.lake, reading=True)
    except LakeError as exc:
        print(f"portcullis {command}: --lake: {exc}", file=sys.stderr)
        return False


def handle(args: argparse.Namespace) -> int:
    lake = lake_argument(args, "sql", attach=args.attach)
    if lake is False:
        return 2
    if args.attach:
        return print_attach(lake)
    if not args.query:
        print("portcullis sql: give one SQL statement (or --attach)", file=sys.stderr)
        return 2
    db = Path(args.db).resolve()
    payload: dict[str, Any] = {"sql": args.query}
    if args.format == "parquet":
        if not args.output:
            print("portcullis sql: --format parquet needs --output FILE", file=sys.stderr)
            return 2
        payload["output"] = str(Path(args.output).resolve())
    result = call_recording(db, "/query", payload, "sql", lake)
    if result is None:
        return 1
    if args.format == "parquet":
        print(f"{result['rows']} rows written to {result['written']}", file=sys.stderr)
        return 0
    text = render(result["columns"], result["rows"], args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{len(result['rows'])} rows written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def print_attach(lake: Lake | None) -> int:
    if lake is None:
        print("portcullis sql --attach: a DuckDB file admits one process, so while the gateway "
              "writes it only `portcullis sql` reads it; record into a lake (portcullis run "
              "--lake DIR) to attach it from your own DuckDB, then: portcullis sql --attach --lake DIR",
              file=sys.stderr)
        return 2
    names = ("ducklake", "postgres" if lake.shared else "sqlite")
    try:
        extensions.install(DUCKDB_HOME_EXTENSIONS.expanduser(), names)
    except (extensions.MissingExtension, OSError) as exc:
        print(f"portcullis sql --attach: cannot link DuckDB's extensions: {exc}", file=sys.stderr)
    print(lake.attach_statement() + ";")
    return 0


def call_recording(db: Path, route: str, payload: dict[str, Any], command: str,
                   lake: Lake | None = None) -> dict | None:
    """The answer, or None after printing why there is none."""
    try:
        return ask(db, route, payload, lake)
    except RequestFailed as exc:
        print(f"portcullis {command}: {exc.body.get('error')}: {exc}", file=sys.stderr)
    except StoreError as exc:
        print(f"portcullis {command}: {exc}", file=sys.stderr)
    return None
