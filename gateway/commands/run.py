"""portcullis run: start the gateway in the foreground.

Without --reviewers, a reviewers.yaml in the current directory (the default file of
`portcullis reviewer add`) is used when it exists, so the review UI comes up. On a first
run in a terminal, with none, an `admin` reviewer is created there and its one-time
password printed in the banner (--no-bootstrap-reviewer: not).
With --workers N (or auto: one per core), N gateway processes share the proxy address;
N > 1 needs shared state (--state), see docs/deploy.md.
With neither --db nor --lake, the recording is the local lake settings.DEFAULT_LAKE, which
an analyst's own DuckDB attaches read-only while the gateway writes (the banner prints the
statement); --db FILE records into one DuckDB file instead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway import settings
from gateway.commands.bootstrap import bootstrap
from gateway.server import StartupError, serve
from gateway.workers import parse_workers, supervise


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="start the gateway", description=__doc__)
    settings.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    parser.add_argument("--workers", type=parse_workers, default=1, metavar="N|auto",
                        help="gateway processes on the one proxy address (auto: one per core); "
                             "more than 1 needs --state (docs/deploy.md)")
    parser.add_argument("--no-bootstrap-reviewer", action="store_true",
                        help="on a first run without a reviewers file, do not create the admin reviewer")
    parser.set_defaults(handler=handle)


DEFAULT_REVIEWERS = Path("reviewers.yaml")


def handle(args: argparse.Namespace) -> int:
    if args.reviewers is None and DEFAULT_REVIEWERS.is_file():
        args.reviewers = str(DEFAULT_REVIEWERS)
    notice = bootstrap(args, DEFAULT_REVIEWERS, settings.mitmproxy_options(args).get("portcullis_rules"))
    options = settings.mitmproxy_options(args)
    notice = [*notice, *default_lake_notice(args)]
    try:
        if args.workers > 1:
            if notice:
                print("\n".join(notice), flush=True)
            return asyncio.run(supervise(args.listen, options, args.quiet, args.workers))
        return asyncio.run(serve(args.listen, options, quiet=args.quiet, notice=notice))
    except StartupError as exc:
        print(f"portcullis: cannot start: {exc}", file=sys.stderr)
        return 2


def default_lake_notice(args: argparse.Namespace) -> list[str]:
    """Banner lines for the default recording: the analyst's ATTACH, and where an earlier
    default recording (a DuckDB file, before the default was the lake) still is."""
    if not settings.default_recording(args):
        return []
    from recordings.lake import Lake

    lines = [f"analysts (own DuckDB, read-only, live): {Lake.parse(str(settings.DEFAULT_LAKE)).attach_statement()};",
             "  offline, run `portcullis sql --attach` once first (links the DuckDB extensions)"]
    if settings.DEFAULT_DB.is_file():
        lines.append(f"an earlier recording is kept as it was in {settings.DEFAULT_DB} "
                     f"(portcullis sql --db {settings.DEFAULT_DB} \"...\"; --db FILE records into a file)")
    return lines
