"""First run: `portcullis run` in a terminal, with no reviewers file, creates an admin reviewer.

The real CLI runs on a pseudo-terminal (a person at a terminal is the case this is for)
in an empty working directory. The banner shows the admin's password and token once;
reviewers.yaml holds only their hashes; the password signs in to the review UI and
the admin is in every group the rules name. The other cases (``--no-bootstrap-reviewer``
on the real command line, output not a terminal, ``--ui off``, a file already there, so
a second run prints no secret) are checked in process.
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from gateway.cli import build_parser
from gateway.commands.bootstrap import bootstrap, rule_groups
from review_ui.reviewers import parse_reviewers
from tests.support.gateway import READY_LINE, free_port
from tests.support.review_login import post_login

PORTCULLIS = Path(sys.executable).with_name("portcullis")
RULES = """
version: 1
rules:
  - name: refunds
    match: {method: POST, path: /v1/refunds}
    action: hold
    approvers: [finance-leads]
    escalate_to: [security-oncall]
"""


class Run:
    """One `portcullis run` in ``cwd``, on a pty (``tty``) or a pipe; its output so far."""

    def __init__(self, cwd: Path, confdir: Path, *extra: str, tty: bool = True) -> None:
        self.ui_port = free_port()
        rules = cwd / "rules.yaml"
        if not rules.exists():
            rules.write_text(textwrap.dedent(RULES))
        command = [str(PORTCULLIS), "run", "--listen", f"127.0.0.1:{free_port()}", "--rules", str(rules),
                   "--confdir", str(confdir), "--db", str(cwd / "rec.duckdb"), "--ui", f"127.0.0.1:{self.ui_port}",
                   *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTCULLIS_", "HTTP_PROXY", "HTTPS_PROXY"))}
        self.output = ""
        if tty:
            self.master, slave = pty.openpty()
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
            os.close(slave)
        else:
            self.master = None
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.output or "Agent environment" not in self.output:
            assert time.monotonic() < deadline and self.process.poll() is None, self.output
            if self.master is not None:
                ready, _, _ = select.select([self.master], [], [], 0.1)
                if ready:
                    try:
                        self.output += os.read(self.master, 65536).decode(errors="replace").replace("\r\n", "\n")
                    except OSError:
                        break
            else:
                assert self.process.stdout is not None
                self.output += self.process.stdout.readline()
        return self.output

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.master is not None:
            os.close(self.master)


def test_a_first_run_in_a_terminal_creates_an_admin_whose_password_is_shown_once(tmp_path: Path, confdir):
    first = Run(tmp_path, confdir)
    try:
        banner = first.wait_ready()
        password = re.search(r"password:\s+(\S+)", banner).group(1)
        token = re.search(r"api token:\s+(pcr_\S+)", banner).group(1)
        assert banner.count(password) == 1 and banner.count(token) == 1
        assert "created reviewer admin (finance-leads, security-oncall)" in banner
        assert f"review UI: {first.ui_url} (1 reviewers)" in banner
        stored_file = tmp_path / "reviewers.yaml"
        stored = stored_file.read_text()
        assert password not in stored and token not in stored and "scrypt$" in stored
        assert stored_file.stat().st_mode & 0o077 == 0
        admin = parse_reviewers(stored)["admin"]
        assert admin.groups == frozenset({"finance-leads", "security-oncall"})
        assert post_login(first.ui_url, "admin", password).status_code == 302
        assert post_login(first.ui_url, "admin", password + "x").status_code == 401
        pending = requests.get(first.ui_url + "/api/pending", headers={"Authorization": f"Bearer {token}"},
                               timeout=10, proxies={"http": "", "https": ""})
        assert pending.status_code == 200 and pending.json() == {"pending": []}
    finally:
        first.stop()


class _Out:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("how", "args", "tty"), [
    ("not a terminal", {}, False),
    ("--ui off", {"ui": "off"}, True),
    ("--no-bootstrap-reviewer", {"no_bootstrap_reviewer": True}, True),
    ("--reviewers given", {"reviewers": "elsewhere.yaml"}, True),
])
def test_no_admin_is_created_when_off_given_or_nobody_reads_the_terminal(tmp_path: Path, how, args, tty):
    namespace = argparse.Namespace(**{"ui": "127.0.0.1:8081", "no_bootstrap_reviewer": False, "reviewers": None,
                                      **args})
    assert bootstrap(namespace, tmp_path / "reviewers.yaml", None, _Out(tty)) == []
    assert not (tmp_path / "reviewers.yaml").exists()


def test_no_bootstrap_reviewer_turns_it_off(tmp_path: Path, confdir):
    """The real command line's flag, on a terminal, with the rules naming groups: nothing
    created (what `run` does with bootstrap's [] is the first test's banner, without it)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent(RULES))
    args = build_parser().parse_args(["run", "--listen", f"127.0.0.1:{free_port()}", "--rules", str(rules),
                                      "--confdir", str(confdir), "--ui", "127.0.0.1:8081",
                                      "--no-bootstrap-reviewer"])
    assert bootstrap(args, tmp_path / "reviewers.yaml", str(rules), _Out(True)) == []
    assert args.reviewers is None
    assert not (tmp_path / "reviewers.yaml").exists()
    # and without the flag, the same command line would have created the admin
    args = build_parser().parse_args(["run", "--rules", str(rules), "--ui", "127.0.0.1:8081"])
    assert bootstrap(args, tmp_path / "reviewers.yaml", str(rules), _Out(True))
    assert (tmp_path / "reviewers.yaml").exists()


def test_the_admin_is_in_every_group_the_rules_name_and_a_present_file_is_kept(tmp_path: Path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent(RULES))
    namespace = argparse.Namespace(ui="127.0.0.1:8081", no_bootstrap_reviewer=False, reviewers=None)
    notice = bootstrap(namespace, tmp_path / "reviewers.yaml", str(rules), _Out(True))
    assert notice[0].startswith("first run: created reviewer admin (finance-leads, security-oncall)")
    assert namespace.reviewers == str((tmp_path / "reviewers.yaml").resolve())
    before = (tmp_path / "reviewers.yaml").read_text()
    again = argparse.Namespace(ui="127.0.0.1:8081", no_bootstrap_reviewer=False, reviewers=None)
    assert bootstrap(again, tmp_path / "reviewers.yaml", str(rules), _Out(True)) == []
    assert (tmp_path / "reviewers.yaml").read_text() == before
    assert rule_groups(str(tmp_path / "missing.yaml")) == []
