"""portcullis export: write flows and events since a date, for a SIEM or a data lake.

    portcullis export --since 2026-01-01 --format parquet --output exports/
    duckdb -c "SELECT decision, count(*) FROM 'exports/flows.parquet' GROUP BY ALL"

Writes DIR/flows.<ext> and DIR/events.<ext> (parquet, or jsonl: one JSON object per
line). Works while the gateway runs (through its socket) and when it is stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.commands.sql import add_db_argument, call_recording, lake_argument
from recordings.export import FORMATS, parse_since


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export flows and events to parquet/jsonl",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_db_argument(parser)
    parser.add_argument("--since", default="1970-01-01",
                        help="first day (UTC) to export: 2026-01-01 or an ISO timestamp")
    parser.add_argument("--format", choices=sorted(FORMATS), default="parquet", help="file format")
    parser.add_argument("--output", metavar="DIR", required=True, help="directory to write into")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        parse_since(args.since)
    except ValueError as exc:
        print(f"portcullis export: --since: {exc}", file=sys.stderr)
        return 2
    lake = lake_argument(args, "export")
    if lake is False:
        return 2
    payload = {"since": args.since, "format": args.format, "output": str(Path(args.output).resolve())}
    result = call_recording(Path(args.db).resolve(), "/export", payload, "export", lake)
    if result is None:
        return 1
    print(f"exported {result['flows']} flows and {result['events']} events since {args.since}: "
          + ", ".join(result["files"]))
    return 0
