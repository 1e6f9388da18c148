"""``--state`` at start: a value that is neither ``memory`` nor a PostgreSQL URL, or a
server that cannot be reached, stops the gateway with a clear message that never shows
the URL's password."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import cli_run

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, state: str) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\ndefault: allow\nrules: []\n")
    return cli_run.portcullis("run", "--listen", "127.0.0.1:0", "--ui", "off", "--rules", str(rules),
                              "--confdir", str(tmp_path / "conf"), "--db", str(tmp_path / "rec.duckdb"),
                              "--state", state, cwd=ROOT)


@pytest.mark.parametrize(("state", "message"), [
    ("redis://db/0", "portcullis_state must be 'memory' or a postgresql:// URL"),
    ("postgresql://portcullis:s3cret-pw@127.0.0.1:1/portcullis",
     "portcullis_state: cannot use PostgreSQL at 127.0.0.1:1/portcullis"),
])
def test_a_bad_state_stops_the_start_with_a_clear_message(tmp_path, state, message):
    done = run(tmp_path, state)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and message in output, output
    assert "s3cret-pw" not in output
