"""Reference sections of the docs, generated from the declarations in the code.

The rules keys (addons.policy.engine.SchemaField, addons.policy.conditions.MatchKey), the
audit event kinds (addons.core.events.EventKind) and the command-line flags (the argparse
parsers of gateway.cli, whose `run` flags come from gateway.settings) are each declared
once, in code. Their reference tables in docs/*.md are written from those declarations
between markers::

    <!-- generated:NAME (python -m gateway.docs) -->
    ...
    <!-- /generated:NAME -->

so a key, kind or flag cannot be added without its docs, nor the docs drift from the
code: tests/test_docs.py checks that the committed text equals what this module writes.

    python -m gateway.docs          # rewrite the generated sections in place
    python -m gateway.docs --check  # exit 1 and name the files that are out of date
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from gateway.settings import PROJECT_ROOT

#: Pages whose links in generated tables are relative to docs/.
DOCS_DIR = PROJECT_ROOT / "docs"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped (also inside backticks, as GFM needs)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _see(page: str) -> str:
    if not page:
        return ""
    label = page.rsplit("/", 1)[-1]
    return f" ([{label}]({page}))"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- rules keys ---------------------------------------------------------------------


def _schema() -> tuple[dict, dict, dict]:
    import addons.schema  # noqa: F401  (registers every package's rules keys)
    from addons.policy import conditions, engine

    return engine.TOP_LEVEL_FIELDS, engine.RULE_FIELDS, conditions.MATCH_KEYS


def top_level_keys() -> str:
    top, _, _ = _schema()
    return _table(["key", "value", "what it does", "example"],
                  ([f"`{f.name}`", f.type, f.summary + _see(f.see), f"`{f.name}: {f.example}`"]
                   for f in top.values()))


def rule_keys() -> str:
    _, rule, _ = _schema()
    return _table(["key", "value", "what it does", "example"],
                  ([f"`{f.name}`", f.type, f.summary + _see(f.see), f"`{f.name}: {f.example}`"]
                   for f in rule.values()))


def match_keys() -> str:
    _, _, keys = _schema()
    return _table(["key", "value", "holds when", "example"],
                  ([f"`{k.name}`", k.type, k.summary + _see(k.see), f"`{k.name}: {k.example}`"]
                   for k in keys.values()))


def example_file(where: str, key: str) -> str:
    """A whole rules file that uses `key`'s declared example (where: top, rule or match),
    for checking that every example in the reference compiles."""
    top, rule, keys = _schema()
    if where == "top":
        example = top[key].example
        if key == "version":
            return f"version: {example}\n"
        return f"version: 1\n{key}: {example}\n"
    if where == "rule":
        fields = {"name": "example", "match": "{}", key: rule[key].example}
    else:
        fields = {"name": "example", "match": f"{{{key}: {keys[key].example}}}"}
    body = "".join(f"    {name}: {value}\n" for name, value in fields.items()).replace("    ", "  - ", 1)
    return f"version: 1\nrules:\n{body}"


# --- audit events -------------------------------------------------------------------


def event_kinds() -> str:
    from addons.core.events import EventKind

    return _table(["kind", "what happened"], ([f"`{k.value}`", k.summary] for k in EventKind))


# --- command-line flags -------------------------------------------------------------


def commands() -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Every `portcullis` subcommand's parser and one-line help, by name (nested
    subcommands as 'a b')."""
    from gateway.cli import build_parser

    found: dict[str, tuple[argparse.ArgumentParser, str]] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:  # argparse has no public accessor for subparsers
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help or "" for a in action._choices_actions}
                for name, sub in action.choices.items():
                    found[f"{prefix}{name}"] = (sub, helps.get(name, ""))
                    walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return found


def documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's arguments and flags, without -h and nested-subcommand choosers."""
    return [a for a in parser._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


def _usage(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest).upper() + ("..." if action.nargs in ("+", "*") else "")
    flag = ", ".join(action.option_strings)
    if action.nargs == 0:
        return flag
    metavar = action.metavar or (
        "|".join(action.choices) if action.choices else action.dest.upper())
    return f"{flag} {metavar}"


def _own_help(action: argparse.Action) -> str:
    """The help without the "(default: X)" that repeats the actual default (it has a column)."""
    return (action.help or "").removesuffix(f" (default: {action.default})")


def _default(action: argparse.Action) -> str:
    from gateway import settings

    value = action.default
    if (value is None or value is False or value in ([], "", argparse.SUPPRESS) or action.nargs == 0
            or "default" in _own_help(action)):
        return ""  # none, a switch, or the help says it (e.g. from an environment variable)
    if value == str(settings.DEFAULT_CONFDIR):
        return "`$PORTCULLIS_HOME` or `~/.portcullis`"
    # Paths that depend on how Portcullis was installed: say both, not this machine's.
    if value == str(settings.DEFAULT_DB):
        return "`recordings/portcullis.duckdb` in a clone, else `~/.portcullis/portcullis.duckdb`"
    if value == str(settings.DEFAULT_RULES):
        return "`rules/default.yaml` as shipped"
    text = str(value)
    if text.startswith(str(PROJECT_ROOT)):  # the checkout-relative path, not this machine's
        text = text[len(str(PROJECT_ROOT)) + 1:]
    return f"`{text}`"


def _help(action: argparse.Action, run: bool) -> str:
    """The flag's help; for `portcullis run`, the mitmproxy option it sets."""
    from gateway import settings

    text = _own_help(action)
    if run and action.option_strings:
        option = settings.option_for_flag(action.option_strings[0])
        if option:
            text += f" Option `{option}`."
    if isinstance(action, argparse._AppendAction):
        text += " Repeatable."
    return text


def cli_reference() -> str:
    out: list[str] = []
    with _without_portcullis_environment():
        found = commands()
    for name, (parser, summary) in found.items():
        actions = documented_actions(parser)
        out.append(f"### `portcullis {name}`\n\n{summary[:1].upper()}{summary[1:]}.\n\n")
        if actions:
            rows = []
            for a in actions:
                rows.append([f"`{_usage(a)}`", _default(a), _help(a, run=name == "run")])
            out.append(_table(["argument", "default", "meaning"], rows))
            out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


@contextlib.contextmanager
def _without_portcullis_environment() -> Iterator[None]:
    """Some flags default to PORTCULLIS_* variables (a reviewer token, the UI address):
    the reference shows the built-in defaults, never this shell's values."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("PORTCULLIS_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


# --- the generated sections -----------------------------------------------------------

#: (file relative to the project, section name) -> generator
SECTIONS: dict[tuple[str, str], Callable[[], str]] = {
    ("docs/rules.md", "top-level-keys"): top_level_keys,
    ("docs/rules.md", "rule-keys"): rule_keys,
    ("docs/rules.md", "match-keys"): match_keys,
    ("docs/recording.md", "event-kinds"): event_kinds,
    ("docs/cli.md", "commands"): cli_reference,
}


def _marker(name: str) -> tuple[str, str]:
    return f"<!-- generated:{name} (python -m gateway.docs) -->\n", f"<!-- /generated:{name} -->"


def render(text: str, sections: dict[str, Callable[[], str]], filename: str) -> str:
    """`text` with every named generated section replaced by its generator's output."""
    for name, generate in sections.items():
        start, end = _marker(name)
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"{filename}: no generated section {name!r} (add the markers {start.strip()} ... {end})")
        text = pattern.sub(lambda _m, g=generate, s=start, e=end: s + g() + e, text, count=1)
    return text


def generated_files() -> dict[Path, str]:
    """Each file with generated sections -> its text as it should be committed."""
    by_file: dict[str, dict[str, Callable[[], str]]] = {}
    for (file, name), generate in SECTIONS.items():
        by_file.setdefault(file, {})[name] = generate
    return {PROJECT_ROOT / file: render((PROJECT_ROOT / file).read_text(encoding="utf-8"), sections, file)
            for file, sections in by_file.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_files().items():
        if path.read_text(encoding="utf-8") != text:
            stale.append(path)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    verb = "out of date" if args.check else "rewritten"
    for path in stale:
        print(f"{path.relative_to(PROJECT_ROOT)}: {verb}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
