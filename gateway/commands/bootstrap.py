"""First run: an ``admin`` reviewer, so the review UI comes up and the first hold can be decided.

`portcullis run` with no reviewers file (no ``--reviewers``, no ./reviewers.yaml) and its
review UI on creates ./reviewers.yaml with one reviewer, ``admin``, in every group the
rules name as ``approvers`` or ``escalate_to``. Its password and API token are
generated, printed once in the banner, and only their scrypt hashes are stored (mode
0600), exactly as `portcullis reviewer add` does; later runs find the file and print
nothing. ``--no-bootstrap-reviewer`` turns this off.

Only when standard output is a terminal: a person is there to read the password once.
Under a service manager, in CI or in a test harness the output goes to a log, where a
password must not be written, and a reviewers file appearing in the working directory
would surprise; there, create reviewers with `portcullis reviewer add`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from review_ui.reviewers import add_reviewer

ADMIN = "admin"


def rule_groups(rules_path: str | None) -> list[str]:
    """Every reviewer group the rules file names (approvers, escalate_to); [] if it cannot load."""
    if not rules_path:
        return []
    import addons.schema  # noqa: F401  (registers every package's rules keys)
    from addons.policy.engine import load_policy  # the gateway reports a broken file itself

    try:
        policy = load_policy(rules_path)
    except Exception:  # noqa: BLE001 - any problem with the file is the gateway's to report
        return []
    groups: set[str] = set()
    for rule in policy.rules:
        extensions = dict(rule.extensions)
        for key in ("approvers", "escalate_to"):
            groups |= set(extensions.get(key) or ())
    return sorted(groups)


def wanted(args: argparse.Namespace, reviewers_file: Path, out: TextIO = sys.stdout) -> bool:
    ui = str(getattr(args, "ui", "") or "").strip().lower()
    return (not getattr(args, "no_bootstrap_reviewer", False) and args.reviewers is None
            and not reviewers_file.exists() and ui not in ("off", "none", "false")
            and out.isatty())


def bootstrap(args: argparse.Namespace, reviewers_file: Path, rules_path: str | None,
              out: TextIO = sys.stdout) -> list[str]:
    """Create the admin reviewer when :func:`wanted`; the banner lines that show its secrets once."""
    if not wanted(args, reviewers_file, out):
        return []
    groups = rule_groups(rules_path)
    password, token = add_reviewer(reviewers_file, ADMIN, groups)
    args.reviewers = str(reviewers_file.resolve())
    return [
        f"first run: created reviewer {ADMIN} ({', '.join(groups) or 'no groups'}) in {args.reviewers}",
        f"  password:  {password}",
        f"  api token: {token}",
        "  shown once, only their hashes are stored; sign in to the review UI as admin,",
        "  and add reviewers with `portcullis reviewer add NAME --groups ...`",
    ]
