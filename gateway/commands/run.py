"""portcullis run: start the gateway in the foreground.

Without --reviewers, a reviewers.yaml in the current directory (the default file of
`portcullis reviewer add`) is used when it exists, so the review UI comes up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway import settings
from gateway.server import StartupError, serve


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="start the gateway", description=__doc__)
    settings.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    parser.set_defaults(handler=handle)


DEFAULT_REVIEWERS = Path("reviewers.yaml")


def handle(args: argparse.Namespace) -> int:
    if args.reviewers is None and DEFAULT_REVIEWERS.is_file():
        args.reviewers = str(DEFAULT_REVIEWERS)
    try:
        return asyncio.run(serve(args.listen, settings.mitmproxy_options(args), quiet=args.quiet))
    except StartupError as exc:
        print(f"portcullis: cannot start: {exc}", file=sys.stderr)
        return 2
