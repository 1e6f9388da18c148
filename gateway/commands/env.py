"""portcullis env: print shell exports that point an agent at the gateway.

Use as:  eval "$(portcullis env)"

The proxy and CA-trust variables of every common client (gateway/agent_env.py says which
reads which), then, as comments, what a client needs that no variable gives it (aiohttp's
trust_env=True, Node 20's proxy agent); --no-notes leaves the comments out.
"""

from __future__ import annotations

import argparse

from gateway import settings
from gateway.agent_env import agent_environment, client_notes, ensure_ca, shell_exports


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="print the agent's proxy environment", description=__doc__)
    parser.add_argument("--listen", type=settings.parse_hostport, default=settings.DEFAULT_LISTEN,
                        help=f"the gateway's proxy address (default {settings.DEFAULT_LISTEN})")
    parser.add_argument("--confdir", default=str(settings.DEFAULT_CONFDIR),
                        help="the gateway's confdir (holds its CA certificate)")
    parser.add_argument("--ui", default="127.0.0.1:8081", help="the review UI address, for NO_PROXY")
    parser.add_argument("--no-notes", action="store_true", help="only the exports, no comments")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    host, port = args.listen
    env = agent_environment(host, port, ensure_ca(args.confdir), ui_address=args.ui)
    print(shell_exports(env))
    if not args.no_notes:
        print(client_notes())
    return 0
