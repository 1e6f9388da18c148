"""portcullis env: print shell exports that point an agent at the gateway.

Use as:  eval "$(portcullis env)"
"""

from __future__ import annotations

import argparse

from gateway import settings
from gateway.agent_env import agent_environment, ensure_ca, shell_exports


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="print the agent's proxy environment", description=__doc__)
    parser.add_argument("--listen", type=settings.parse_hostport, default=settings.DEFAULT_LISTEN,
                        help=f"the gateway's proxy address (default {settings.DEFAULT_LISTEN})")
    parser.add_argument("--confdir", default=str(settings.DEFAULT_CONFDIR),
                        help="the gateway's confdir (holds its CA certificate)")
    parser.add_argument("--ui", default="127.0.0.1:8081", help="the review UI address, for NO_PROXY")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    host, port = args.listen
    env = agent_environment(host, port, ensure_ca(args.confdir), ui_address=args.ui)
    print(shell_exports(env))
    return 0
