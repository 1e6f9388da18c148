"""portcullis exec [--identity NAME] -- COMMAND [ARG ...]

Run COMMAND with the proxy variables, the CA trust variables and (with --identity) the
agent's proxy credentials set, so that requests, httpx, aiohttp (trust_env=True),
urllib, curl and Node (NODE_USE_ENV_PROXY) clients go through the gateway:

    PORTCULLIS_TOKEN=... portcullis exec --identity billing-agent -- python agent.py

The token is read from an environment variable (--token-env, default PORTCULLIS_TOKEN),
never from the command line, where other users could see it in the process list.
Inherited NO_PROXY / ALL_PROXY variables are dropped: they would let the agent bypass
the gateway. Use `--identity jwt --token-env VAR` to present a JWT instead of a token.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from gateway import settings
from gateway.agent_env import agent_environment, ensure_ca

#: Variables that would send some traffic around the gateway.
BYPASS_VARIABLES = ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("exec", help="run a command whose HTTP traffic goes through the gateway",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=settings.parse_hostport, default=settings.DEFAULT_LISTEN,
                        help=f"the gateway's proxy address (default {settings.DEFAULT_LISTEN})")
    parser.add_argument("--confdir", default=str(settings.DEFAULT_CONFDIR),
                        help="the gateway's confdir (holds its CA certificate)")
    parser.add_argument("--identity", help="the agent's identity name (or 'jwt' for a JWT)")
    parser.add_argument("--token-env", default="PORTCULLIS_TOKEN", metavar="VAR",
                        help="environment variable holding the token (default PORTCULLIS_TOKEN)")
    parser.add_argument("--ui", help="the review UI address to exempt from the proxy (NO_PROXY)")
    parser.add_argument("--no-check", action="store_true",
                        help="start the command even if no gateway is listening")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the agent's command line, after --")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        return _fail("no command given: portcullis exec [options] -- COMMAND [ARG ...]", 2)
    credentials = None
    if args.identity:
        token = os.environ.get(args.token_env)
        if not token:
            return _fail(f"--identity {args.identity} needs its token in ${args.token_env}", 2)
        credentials = (args.identity, token)
    host, port = args.listen
    if not args.no_check and not _listening(host, port):
        return _fail(f"no gateway is listening on {host}:{port}; start it with `portcullis run` "
                     "(or pass --no-check)", 2)
    env = {k: v for k, v in os.environ.items() if k not in BYPASS_VARIABLES}
    env.update(agent_environment(host, port, ensure_ca(args.confdir), ui_address=args.ui,
                                 credentials=credentials))
    env["NODE_USE_ENV_PROXY"] = "1"  # Node >= 24 built-in fetch/http honour the proxy variables
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        return _fail(f"cannot run {command[0]}: {exc.strerror}", 127)
    return 0  # not reached: exec replaced this process


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _fail(message: str, code: int) -> int:
    print(f"portcullis exec: {message}", file=sys.stderr)
    return code
