"""portcullis sql "SELECT ...": query the recording, read-only, while the gateway runs or not.

    portcullis sql "SELECT decision, count(*) FROM flows GROUP BY ALL"
    portcullis sql --format csv --output blocked.csv "SELECT * FROM blocked_by_rule"
    portcullis sql --format parquet --output flows.parquet "FROM flows"

A running gateway answers through its socket (<db>.sock); otherwise the file is opened
read-only. Statements that write are refused. See docs/recording.md for the schema.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway import settings
from recordings.control import RequestFailed, ask
from recordings.results import render
from recordings.store import StoreError

FORMATS = ["table", "csv", "json", "parquet"]  # parquet: written by the store, not rendered


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=str(settings.DEFAULT_DB),
                        help=f"the recording (default: {settings.DEFAULT_DB})")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sql", help="query the recording (read-only)", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_db_argument(parser)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument("query", metavar="SQL", help="one read-only SQL statement")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    db = Path(args.db).resolve()
    payload: dict[str, Any] = {"sql": args.query}
    if args.format == "parquet":
        if not args.output:
            print("portcullis sql: --format parquet needs --output FILE", file=sys.stderr)
            return 2
        payload["output"] = str(Path(args.output).resolve())
    result = call_recording(db, "/query", payload, "sql")
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


def call_recording(db: Path, route: str, payload: dict[str, Any], command: str) -> dict | None:
    """The answer, or None after printing why there is none."""
    try:
        return ask(db, route, payload)
    except RequestFailed as exc:
        print(f"portcullis {command}: {exc.body.get('error')}: {exc}", file=sys.stderr)
    except StoreError as exc:
        print(f"portcullis {command}: {exc}", file=sys.stderr)
    return None

