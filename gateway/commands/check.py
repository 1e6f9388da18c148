"""portcullis check FILE: validate a rules file; exit 0 if valid, 1 if not."""

from __future__ import annotations

import argparse
import sys

import addons.schema  # noqa: F401  (registers every package's rules keys)
from addons.core.rulefile import RuleFileError
from addons.policy.engine import load_policy


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("check", help="validate rules files", description=__doc__)
    parser.add_argument("files", nargs="+", metavar="FILE", help="rules files to check")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except RuleFileError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(f"{path}: ok ({len(policy.rules)} rules, default {policy.default})")
    return status
