"""The docs are tested against the code (as Datasette's tests/test_docs.py does).

Every rules key, match key, audit event kind, setting and `portcullis` flag is declared
once in code; the reference sections of docs/rules.md, docs/recording.md and docs/cli.md
are generated from those declarations (gateway/docs.py), and these tests fail when a
declaration lacks its docs or the committed docs differ from what the code says. Every
```yaml block in docs/ and the README must also pass `portcullis check`.
In-process except the one `portcullis check` run over all YAML blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest

from addons.core.events import EventKind
from addons.core.options import Option
from addons.policy import conditions, engine
from addons.portcullis import make_addons
from gateway import docs, settings
from gateway.cli import build_parser
from gateway.cli import main as cli_main
from tests.support import cli_run

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
#: A ```yaml block preceded by this comment is not checked; the reason is required.
SKIP = re.compile(r"<!-- portcullis check: skip \((?P<why>[^)]+)\) -->\n$")
#: Blocks that name files on the reader's machine (a JWKS, a CA bundle, a secret file).
MAX_SKIPPED = 3

import addons.schema  # noqa: E402,F401  (registers every package's rules keys)

TOP = dict(engine.TOP_LEVEL_FIELDS)
RULE = dict(engine.RULE_FIELDS)
MATCH = dict(conditions.MATCH_KEYS)


def test_generated_reference_sections_equal_what_the_code_declares():
    stale = [str(path.relative_to(ROOT)) for path, text in docs.generated_files().items()
             if path.read_text(encoding="utf-8") != text]
    assert not stale, f"out of date: {stale}; run `python -m gateway.docs`"


# --- rules keys ---------------------------------------------------------------------


@pytest.mark.parametrize(("where", "key"), [("top", k) for k in TOP] + [("rule", k) for k in RULE]
                         + [("match", k) for k in MATCH])
def test_every_rules_key_is_declared_with_docs_and_its_example_compiles(where, key, monkeypatch):
    declared = {"top": TOP, "rule": RULE, "match": MATCH}[where][key]
    for attribute in ("type", "summary", "example"):
        assert getattr(declared, attribute).strip(), f"{key}: no {attribute}"
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_docs")  # the credentials example's variable
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-docs")  # the slack example's variables
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "docs-signing-secret")
    policy = engine.compile_policy(docs.example_file(where, key), f"<example of {key}>")
    assert policy.rules or where == "top"


def test_the_rules_reference_lists_every_key_in_its_table():
    text = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    for section, keys in (("top-level-keys", TOP), ("rule-keys", RULE), ("match-keys", MATCH)):
        block = _generated(text, section)
        rows = re.findall(r"^\| `([a-z_]+)` \|", block, re.M)
        assert rows == list(keys), section


def test_unknown_keys_are_refused_naming_every_declared_key():
    with pytest.raises(engine.RuleFileError) as refused:
        engine.compile_policy("version: 1\ncolour: red\nrules:\n  - name: a\n    hue: 1\n"
                              "    match: {tint: x}\n")
    message = str(refused.value)
    assert f"unknown top-level key 'colour'; expected one of {', '.join(TOP)}" in message
    assert f"unknown rule key 'hue'; expected one of {', '.join(RULE)}" in message
    assert f"unknown match key 'tint'; expected one of {', '.join(MATCH)}" in message


def test_a_rules_key_cannot_be_declared_twice():
    with pytest.raises(ValueError, match="declared twice"):
        engine.rule_field("mask", type="t", summary="s", example="e")(lambda value, where, context: value)
    with pytest.raises(ValueError, match="declared twice"):
        conditions.match_key("sql", type="t", summary="s", example="e")(lambda spec, where: spec)


def test_explain_describes_each_matched_rules_fields_from_their_declarations(tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n  - name: refunds\n    match: {path: /v1/refunds}\n"
                     "    action: hold\n    approvers: [finance]\n    mask: [\"$..ssn\"]\n")
    assert cli_main(["explain", "--rules", str(rules), "POST", "http://a.test/v1/refunds"]) == 0
    out = capsys.readouterr().out
    assert f"    approvers: {RULE['approvers'].summary}" in out
    assert f"    mask: {RULE['mask'].summary}" in out
    assert cli_main(["explain", "--rules", str(rules), "--format", "json", "POST", "http://a.test/v1/refunds"]) == 0
    # the rule's own keys, in the schema's order (addons/schema.py: holds before masking)
    assert json.loads(capsys.readouterr().out)["matched"][0]["fields"] == ["approvers", "mask"]


# --- event kinds --------------------------------------------------------------------


def test_every_event_kind_is_documented_in_recording_md():
    block = _generated((ROOT / "docs" / "recording.md").read_text(encoding="utf-8"), "event-kinds")
    assert re.findall(r"^\| `([a-z_]+)` \|", block, re.M) == [k.value for k in EventKind]
    assert all(k.summary.strip() for k in EventKind)


# --- settings and flags -------------------------------------------------------------


class RecordingLoader:
    """What an addon's load() registers, without a mitmproxy master."""

    def __init__(self) -> None:
        self.options: dict[str, tuple] = {}
        self.master = argparse.Namespace(options=argparse.Namespace(update=lambda **_: None))

    def add_option(self, name, typespec, default, help, choices=None) -> None:  # noqa: A002
        self.options[name] = (typespec, default, help, choices)


def test_every_option_an_addon_registers_is_declared_once_as_data_and_is_a_flag():
    loader = RecordingLoader()
    for addon in make_addons():
        if hasattr(addon, "load"):
            addon.load(loader)
    declared = {o.name: o for o in settings.declared_options()}
    assert len(declared) == len(settings.declared_options()), "an option is declared twice"
    registered = {name for name in loader.options if name.startswith("portcullis_")}
    assert registered == set(declared), "options registered outside the declarations, or declared and unused"
    for name, (typespec, default, help_text, choices) in loader.options.items():
        option = declared[name]
        assert (typespec, default, help_text, choices) == (option.type, option.default, option.help, option.choices)
        assert option.help.strip() and option.flag, name
    flags = {s.flag: s.option for s in settings.SETTINGS}
    assert {o.flag: o.name for o in declared.values()}.items() <= flags.items()


def test_run_flags_set_the_declared_mitmproxy_options(tmp_path):
    args = build_parser().parse_args([
        "run", "--rules", str(tmp_path / "r.yaml"), "--db", "", "--resolve", "a.test=127.0.0.1",
        "--resolve", "b.test=127.0.0.2", "--db-threads", "3", "--header-timeout", "2.5",
    ])
    options = settings.mitmproxy_options(args)
    assert options["portcullis_rules"] == str((tmp_path / "r.yaml").resolve())
    assert options["portcullis_db"] == ""  # '' stays off, never the current directory
    assert options["portcullis_resolve"] == ["a.test=127.0.0.1", "b.test=127.0.0.2"]
    assert options["portcullis_db_threads"] == 3
    assert options["portcullis_header_timeout"] == 2.5
    assert options["portcullis_retain_days"] == 0  # a flag not given: its declared default
    assert "portcullis_reviewers" not in options and "portcullis_identities" not in options
    defaults = settings.mitmproxy_options(build_parser().parse_args(["run"]))
    assert defaults["portcullis_rules"] == str(settings.DEFAULT_RULES)
    assert defaults["portcullis_db"] == str(settings.DEFAULT_DB)


def test_every_flag_of_every_command_has_help_and_is_in_cli_md():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    commands = docs.commands()
    assert {"run", "check", "explain", "env", "exec", "identity add", "reviewer add", "sql",
            "export", "replay"} <= set(commands)
    missing = []
    for name, (parser, summary) in commands.items():
        assert summary, f"portcullis {name} has no help"
        assert f"### `portcullis {name}`" in text
        for action in docs.documented_actions(parser):
            if not (action.help or "").strip():
                missing.append(f"{name} {action.option_strings or action.dest}: no help")
            if f"| {docs._cell(f'`{docs._usage(action)}`')} |" not in text:
                missing.append(f"{name} {docs._usage(action)}: not in docs/cli.md")
    assert not missing, missing


def test_every_flag_the_docs_show_with_a_command_exists_for_that_command():
    commands = docs.commands()
    flags = {name: {o for a in parser._actions for o in a.option_strings} for name, (parser, _) in commands.items()}
    names = sorted(commands, key=len, reverse=True)  # "identity add" before "identity"
    usage = re.compile(r"portcullis (" + "|".join(map(re.escape, names)) + r")\b([^`\n|]*)")
    seen, wrong = 0, []
    for path in DOC_FILES:
        for shown in usage.finditer(path.read_text(encoding="utf-8")):
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", shown[2]):
                seen += 1
                if flag not in flags[shown[1]]:
                    wrong.append(f"{path.name}: {shown[0].strip()!r}: no {flag} in portcullis {shown[1]}")
    assert seen >= 30  # the pattern does find the docs' command lines
    assert not wrong, wrong


def test_the_cli_reference_never_shows_this_shells_token_or_addresses(monkeypatch):
    # replay's --token and --ui default to PORTCULLIS_TOKEN / PORTCULLIS_UI
    monkeypatch.setenv("PORTCULLIS_TOKEN", "secret-token-from-the-shell")
    monkeypatch.setenv("PORTCULLIS_UI", "10.9.8.7:1234")
    reference = docs.cli_reference()
    assert "secret-token-from-the-shell" not in reference and "10.9.8.7" not in reference
    assert reference == _generated((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), "commands")


def test_option_declarations_know_their_flags_value():
    assert Option("x", int, 0, "h").repeat is False
    assert Option("x", list, [], "h").repeat is True


# --- YAML examples ------------------------------------------------------------------


def _yaml_blocks() -> list[tuple[str, int, str, str | None]]:
    """(file, line, text, skip reason) of every ```yaml block in the docs and README."""
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"^```yaml\n(.*?)^```", text, re.M | re.S):
            skip = SKIP.search(text[:block.start()][-200:])
            line = text.count("\n", 0, block.start()) + 2
            found.append((str(path.relative_to(ROOT)), line, block.group(1), skip and skip["why"]))
    return found


def test_every_yaml_block_in_the_docs_passes_portcullis_check(tmp_path):
    blocks = [b for b in _yaml_blocks() if b[3] is None]
    assert len(blocks) >= 9  # the regex finds the blocks (12 today, 3 skipped)
    files = []
    for i, (doc, line, text, _) in enumerate(blocks):
        target = tmp_path / f"{i:02d}-{Path(doc).stem}-line{line}.yaml"
        target.write_text(text, encoding="utf-8")
        files.append(str(target))
    # The Slack example reads its token and secret from the environment, as it says.
    env = {**os.environ, "SLACK_BOT_TOKEN": "xoxb-docs", "SLACK_SIGNING_SECRET": "docs-signing-secret"}
    result = cli_run.portcullis("check", *files, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(files)


def test_skipped_yaml_blocks_are_few_and_say_why():
    skipped = [(doc, line, why) for doc, line, _, why in _yaml_blocks() if why]
    assert len(skipped) <= MAX_SKIPPED, skipped
    assert all(len(why) > 10 for _, _, why in skipped)


def _generated(text: str, name: str) -> str:
    start, end = docs._marker(name)
    return text[text.index(start) + len(start):text.index(end)]
