"""The `portcullis` command. Each subcommand lives in gateway/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["run", "check", "explain", "env", "identity", "exec", "reviewer", "sql", "export", "replay", "decide"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portcullis",
        description="A policy gateway between AI agents and the HTTP APIs they call.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gateway.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
