"""What a gateway imports at start: the heavy optional engines only for rules that use them.

Every start of the gateway (the suite starts about 150) paid for sqlglot, graphql-core,
psycopg, pycryptodome (with cffi) and phonenumbers, whatever the rules said, and for a
scrypt hash the review UI verifies unknown names against. Each engine is now loaded where
its feature is configured: a ``sql:`` or ``graphql:`` key when it is compiled, a
``wallet`` or ``phone`` detector when a mask names it, psycopg for a postgresql://
``--state``; the hash is a constant. These tests check which modules are loaded, each in
a process of its own, and that an engine that cannot be imported is still reported where
it is needed.

Each check's process is forked from one interpreter per module that has imported what
`portcullis run` imports and nothing more (no rules compiled, no addons built): the
state a fresh interpreter reaches after those imports, without paying for them (about a
second of CPU) once per check. That none of the engines is among those imports is
itself checked (the plain rules' test). The psycopg check runs in a fresh interpreter:
its refusal has to be in place before the lazy psycopg module is made.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

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


#: Imports what `portcullis run` imports (and the checks below), once, before any fork.
#: Each request is a line of JSON (code; files for its stdout and stderr); the reply, a
#: line "REPLY <exit code>", is that of a child forked to run it.
FORK_SERVER = r"""
import json, os, signal, sys, threading, traceback
import gateway.cli, gateway.commands.run, gateway.server
import addons.portcullis, addons.policy.engine, addons.schema, addons.core.rulefile
assert threading.active_count() == 1, threading.enumerate()  # fork() copies only this thread
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.alarm(120)  # a child that hangs dies (its exit code says so), not the module
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        try:
            exec(compile(request["code"], "<check>", "exec"), {"__name__": "__main__"})
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print("REPLY", os.waitstatus_to_exitcode(status), flush=True)
"""


class ForkServer:
    """One interpreter that has imported what a start imports; run() forks it per check."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self.process = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=PROJECT_ROOT, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        assert ready.strip() == "ready", f"fork server did not start: {ready!r} (exit {self.process.poll()})"

    def run(self, code: str, *, prelude: str = "") -> subprocess.CompletedProcess[str]:
        """What run_python() returns, from a forked child of the server."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.count += 1
        out, err = (self.directory / f"check{self.count}.{name}" for name in ("out", "err"))
        self.process.stdin.write(json.dumps({"code": prelude + textwrap.dedent(code),
                                             "stdout": str(out), "stderr": str(err)}) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        while reply and not reply.startswith("REPLY "):  # anything else the server printed
            reply = self.process.stdout.readline()
        assert reply, f"the fork server exited ({self.process.poll()})"
        return subprocess.CompletedProcess([], int(reply.split()[1]), out.read_text(), err.read_text())

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


@pytest.fixture(scope="module")
def forked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path_factory.mktemp("forked"))
    yield server
    server.stop()


def loaded_after_start(forked: ForkServer, rules: str) -> dict[str, bool]:
    """Import what `portcullis run` imports, build the addons and compile ``rules`` in a new
    interpreter (a child of the fork server); which ENGINES modules are then loaded."""
    result = forked.run(f"""
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


def test_a_gateway_whose_rules_use_no_engine_imports_none(forked):
    loaded = loaded_after_start(forked, PLAIN_RULES)
    assert loaded == {name: False for name in ENGINES}


@pytest.mark.parametrize("feature", sorted(RULES_USING))
def test_a_rule_that_uses_an_engine_imports_it_when_compiled(forked, feature):
    loaded = loaded_after_start(forked, PLAIN_RULES + RULES_USING[feature])
    assert loaded[feature] is True
    assert not any(loaded[other] for other in RULES_USING if other != feature)


@pytest.mark.parametrize(("feature", "module", "where"), [
    ("sql", "sqlglot", "9:30: rules[1].match.sql"),
    ("graphql", "graphql", "9:29: rules[1].match.graphql"),
])
def test_a_parser_that_cannot_be_imported_is_a_problem_of_the_rule_that_needs_it(forked, feature, module, where):
    # None in sys.modules: every import of the module fails, as when it is not installed
    # (the fork server has not imported it: test_a_gateway_whose_rules_use_no_engine_imports_none).
    result = forked.run(f"""
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


def test_a_rule_file_without_those_keys_compiles_without_the_parsers(forked):
    result = forked.run(f"""
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


@pytest.mark.parametrize("argv", [["env", "--no-notes"], ["sql", "--help"], ["export", "--help"]])
def test_commands_other_than_run_do_not_import_mitmproxys_proxy(argv: list[str], tmp_path: Path) -> None:
    """Only `run` (and the rules checks, which compile rules with the addons) needs the
    addons' options, and with them mitmproxy's addons and proxy layers: about 0.7 s of CPU
    per command. (`env` makes the CA with mitmproxy.certs, which is light.)"""
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from gateway import cli
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                code = cli.main({argv!r})
            except SystemExit as exit:  # --help
                code = exit.code
        print(json.dumps({{"code": code, "printed": bool(out.getvalue()),
                          "heavy": sorted(m for m in sys.modules if m.startswith(("mitmproxy.addons", "mitmproxy.proxy",
                                                                              "mitmproxy.tools", "flask")))}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, env={**__import__("os").environ, "PORTCULLIS_HOME": str(tmp_path)})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["printed"], done.stderr
    assert result["heavy"] == []
