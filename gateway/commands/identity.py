"""portcullis identity add NAME --groups a,b [--file identities.yaml]

Creates an agent identity: prints a new random token ONCE on stdout and stores only its
SHA-256 in the file (an identities file for `portcullis run --identities`, or a rules
file). The file is edited in place; comments and layout are kept. A running gateway
picks the new identity up within a second.

    TOKEN=$(portcullis identity add billing-agent --groups agents,billing)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

import yaml

import addons.schema  # noqa: F401  (registers every package's rules keys)
from addons.core.rulefile import RuleFileError, compose_without_aliases
from addons.identity.addon import NAME, compile_identities_file
from addons.policy.engine import compile_policy

DEFAULT_FILE = "identities.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("identity", help="manage agent identities", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create an identity and print its token once")
    add.add_argument("name", help="identity name (letters, digits, '.', '_', '-')")
    add.add_argument("--groups", default="", help="comma-separated groups, e.g. agents,billing")
    add.add_argument("--file", default=DEFAULT_FILE,
                     help=f"identities or rules file to add it to (default: {DEFAULT_FILE})")
    add.set_defaults(handler=handle_add)


def handle_add(args: argparse.Namespace) -> int:
    path = Path(args.file)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    if not NAME.fullmatch(args.name):
        return _fail(f"invalid name {args.name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        updated = add_entry(text, _entry(args.name, groups, digest))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return _fail(str(exc))
    try:
        validate(updated, path)
    except RuleFileError as exc:
        # e.g. the name exists already: the compiler's message names file, line and field.
        return _fail(f"not changed:\n{exc}")
    _write_atomically(path, updated)
    print(token)
    print(f"identity {args.name} added to {path} (groups: {', '.join(groups) or 'none'}); "
          "the token above is shown once and not stored.\n"
          f"Run an agent with it: PORTCULLIS_TOKEN=<token> portcullis exec --identity {args.name} "
          "-- COMMAND", file=sys.stderr)
    return 0


def _fail(message: str) -> int:
    print(f"portcullis identity: {message}", file=sys.stderr)
    return 1


def _entry(name: str, groups: list[str], digest: str) -> list[str]:
    return [
        f"- name: {name}",
        f"  groups: [{', '.join(json.dumps(g) for g in groups)}]",
        f'  token_sha256: "{digest}"',
    ]


def add_entry(text: str, entry: list[str]) -> str:
    """Insert a list item into the file's top-level ``identities:`` list, keeping the rest."""
    # No anchors/aliases: a recursive one would make the walk below loop forever.
    root = compose_without_aliases(text) if text.strip() else None
    if text and not text.endswith("\n"):
        text += "\n"
    block = "".join(f"  {line}\n" for line in entry)
    if root is None:
        return text + "identities:\n" + block
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("the file is not a YAML mapping")
    value = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "identities"), None)
    if value is None:
        return text + "identities:\n" + block
    empty = (isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null")) or (
        isinstance(value, yaml.SequenceNode) and not value.value)
    if empty:  # `identities:` or `identities: []`: drop the value, list below the key's line
        start, end = value.start_mark.index, value.end_mark.index
        text = text[:start] + text[end:]
        return _insert_after_line(text, start, block)
    if not isinstance(value, yaml.SequenceNode) or value.flow_style:
        raise ValueError("identities must be a block list (one '- name: ...' item per identity) to add to it")
    indent = " " * value.start_mark.column
    last = value.value[-1]
    while isinstance(last, yaml.MappingNode | yaml.SequenceNode) and last.value:
        last = last.value[-1][1] if isinstance(last, yaml.MappingNode) else last.value[-1]
    return _insert_after_line(text, last.end_mark.index, "".join(f"{indent}{line}\n" for line in entry))


def _insert_after_line(text: str, position: int, block: str) -> str:
    line_end = text.find("\n", position)
    cut = len(text) if line_end < 0 else line_end + 1
    return text[:cut] + block + text[cut:]


def validate(text: str, path: Path) -> None:
    """Compile the edited file the way the gateway will; raises RuleFileError."""
    data = yaml.safe_load(text) or {}
    if isinstance(data, dict) and ("rules" in data or "version" in data):
        compile_policy(text, str(path), base_dir=path.parent.resolve())
    else:
        compile_identities_file(text, str(path), path.parent.resolve())


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step, so a watching gateway never reads half of it."""
    directory = path.parent.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
