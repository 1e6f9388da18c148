"""The `portcullis` command. Each subcommand lives in gateway/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["run", "check", "explain", "env", "identity", "exec", "reviewer", "sql", "export", "replay", "decide"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``only`` that one: registering `run` builds its
    flags from the addons' options, which imports mitmproxy (about 0.7 s of CPU), and
    `portcullis check` or `sql` should not pay for that."""
    parser = argparse.ArgumentParser(
        prog="portcullis",
        description="A policy gateway between AI agents and the HTTP APIs they call.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if only is None else [only]:
        importlib.import_module(f"gateway.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None  # else: help, or the usage error
    args = build_parser(command).parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
