"""portcullis run: start the gateway in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway import settings
from gateway.server import StartupError, serve


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="start the gateway", description=__doc__)
    settings.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(serve(args.listen, settings.mitmproxy_options(args), quiet=args.quiet))
    except StartupError as exc:
        print(f"portcullis: cannot start: {exc}", file=sys.stderr)
        return 2
