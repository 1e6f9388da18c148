"""portcullis reviewer add NAME --groups a,b [--file reviewers.yaml]

Creates (or with --replace, resets) a reviewer of held requests. The password is read
from the terminal (or stdin with --password-stdin), or generated when you press Enter;
an API token (for `Authorization: Bearer ...`) is generated. Both are printed ONCE; the
file stores only scrypt hashes. A running gateway picks the change up at once.

    portcullis reviewer add alice --groups finance-leads
    portcullis run --reviewers reviewers.yaml
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys

from review_ui.reviewers import ReviewersError, add_reviewer

DEFAULT_FILE = "reviewers.yaml"
NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("reviewer", help="manage reviewers of held requests", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a reviewer; prints the password and API token once")
    add.add_argument("name", help="reviewer name (letters, digits, '.', '_', '@', '-')")
    add.add_argument("--groups", default="", help="comma-separated groups, e.g. finance-leads,oncall")
    add.add_argument("--file", default=DEFAULT_FILE, help=f"reviewers file (default: {DEFAULT_FILE})")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.add_argument("--no-token", action="store_true", help="do not create an API token")
    add.add_argument("--replace", action="store_true", help="replace an existing reviewer")
    add.add_argument("--slack-user", metavar="MEMBER_ID",
                     help="the reviewer's Slack member id, for decisions from Slack (docs/review.md)")
    add.set_defaults(handler=handle_add)


def handle_add(args: argparse.Namespace) -> int:
    if not NAME.fullmatch(args.name):
        print(f"portcullis: invalid reviewer name {args.name!r}", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password (Enter to generate one): ")
    else:
        password = ""
    if password and len(password) < 10:
        print("portcullis: a password needs at least 10 characters", file=sys.stderr)
        return 2
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    try:
        clear_password, token = add_reviewer(args.file, args.name, groups, password or None,
                                             token=not args.no_token, replace=args.replace,
                                             slack_user=args.slack_user)
    except (ReviewersError, OSError) as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return 1
    print(f"reviewer {args.name} ({', '.join(groups) or 'no groups'}) saved to {args.file}", file=sys.stderr)
    if not password:
        print(f"password: {clear_password}")
    if token:
        print(f"api token: {token}")
    print("These are shown once; only their hashes are stored.", file=sys.stderr)
    return 0
