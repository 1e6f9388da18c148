"""What a gateway imports at start: the heavy optional engines only for rules that use them.

Every start of the gateway (the suite starts about 150) paid for sqlglot, graphql-core,
psycopg, pycryptodome (with cffi) and phonenumbers, whatever the rules said, and for a
scrypt hash the review UI verifies unknown names against. Each engine is now loaded where
its feature is configured: a ``sql:`` or ``graphql:`` key when it is compiled, a
``wallet`` or ``phone`` detector when a mask names it, psycopg for a postgresql://
``--state``; the hash is a constant. These tests check which modules are loaded, in a
fresh interpreter each, and that an engine that cannot be imported is still reported
where it is needed.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap

import pytest

from gateway.settings import PROJECT_ROOT
from review_ui.reviewers import _DUMMY_HASH, ReviewerStore, hash_secret, verify_secret

#: Loaded by the composition root, the CLI and the rules below only when a rule needs them.
ENGINES = {
    "sql": "sqlglot",
    "graphql": "graphql",
    "wallet": "Crypto.Hash.keccak",
    "phone": "phonenumbers",
    "postgres": "psycopg.pq",  # sys.modules["psycopg"] is the lazy module; pq is its first import
}

PLAIN_RULES = """\
version: 1
rules:
  - name: no-deletes
    match: {host: api.example.test, method: DELETE}
    action: block
    mask:
      - {path: "$..notes", detect: [email, card, secret]}
"""

RULES_USING = {
    "sql": """\
  - name: sql
    match: {path: /v1/query, sql: {statement: [drop]}}
    action: block
""",
    "graphql": """\
  - name: graphql
    match: {path: /graphql, graphql: {operation: mutation}}
    action: block
""",
    "wallet": """\
  - name: wallet
    match: {path: /v1/pay}
    mask:
      - {detect: [wallet]}
""",
    "phone": """\
  - name: phone
    match: {path: /v1/people}
    mask:
      - {path: "$..contact", detect: [phone]}
""",
}


def run_python(code: str, *, prelude: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def loaded_after_start(rules: str) -> dict[str, bool]:
    """Import what `portcullis run` imports, build the addons and compile ``rules`` in a new
    interpreter; which ENGINES modules are then loaded."""
    result = run_python(f"""
        import json, sys
        import gateway.cli, gateway.commands.run, gateway.server
        from addons.portcullis import make_addons
        from addons.policy.engine import compile_policy

        make_addons()
        gateway.cli.build_parser()
        compile_policy({rules!r})
        loaded = {{name: module in sys.modules for name, module in {ENGINES!r}.items()}}
        print(json.dumps(loaded))
    """)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_gateway_whose_rules_use_no_engine_imports_none():
    loaded = loaded_after_start(PLAIN_RULES)
    assert loaded == {name: False for name in ENGINES}


@pytest.mark.parametrize("feature", sorted(RULES_USING))
def test_a_rule_that_uses_an_engine_imports_it_when_compiled(feature):
    loaded = loaded_after_start(PLAIN_RULES + RULES_USING[feature])
    assert loaded[feature] is True
    assert not any(loaded[other] for other in RULES_USING if other != feature)


@pytest.mark.parametrize(("feature", "module", "where"), [
    ("sql", "sqlglot", "9:30: rules[1].match.sql"),
    ("graphql", "graphql", "9:29: rules[1].match.graphql"),
])
def test_a_parser_that_cannot_be_imported_is_a_problem_of_the_rule_that_needs_it(feature, module, where):
    # None in sys.modules: every import of the module fails, as when it is not installed.
    result = run_python(f"""
        from addons.core.rulefile import RuleFileError
        from addons.policy.engine import compile_policy
        import addons.schema

        try:
            compile_policy({PLAIN_RULES + RULES_USING[feature]!r}, "rules.yaml")
        except RuleFileError as exc:
            print(exc)
        else:
            print("compiled")
    """, prelude=f"import sys; sys.modules[{module!r}] = None\n")
    assert result.returncode == 0, result.stderr
    assert f"rules.yaml:{where}: {feature}: the {feature} parser cannot be imported" in result.stdout


def test_a_rule_file_without_those_keys_compiles_without_the_parsers():
    result = run_python(f"""
        from addons.policy.engine import compile_policy
        import addons.schema

        print(len(compile_policy({PLAIN_RULES!r}).rules))
    """, prelude="import sys; sys.modules['sqlglot'] = sys.modules['graphql'] = None\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_unknown_names_are_verified_with_the_work_of_a_real_hash():
    """The constant the UI verifies unknown names against costs what a reviewer's hash costs:
    the same scheme, scrypt parameters, salt and digest lengths; and no password matches."""
    real = hash_secret("a reviewer's password").split("$")
    dummy = _DUMMY_HASH.split("$")
    assert dummy[:4] == real[:4]  # scrypt, N, r, p
    assert [len(base64.b64decode(part)) for part in dummy[4:]] == [len(base64.b64decode(part)) for part in real[4:]]
    assert not verify_secret("", _DUMMY_HASH)
    assert ReviewerStore(None).authenticate("nobody", "") is None


def test_shared_state_without_psycopg_stops_the_start_saying_so(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules: []\n")
    result = run_python(f"""
        import sys
        from gateway.cli import main

        sys.exit(main(["run", "--listen", "127.0.0.1:0", "--rules", {str(rules)!r},
                       "--confdir", {str(tmp_path / "conf")!r}, "--db", {str(tmp_path / "r.duckdb")!r},
                       "--state", "postgresql://portcullis@127.0.0.1:1/portcullis"]))
    """, prelude="import sys; sys.modules['psycopg'] = None\n")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "portcullis_state: PostgreSQL needs psycopg, which cannot be imported" in output
    assert "gateway ready" not in output
