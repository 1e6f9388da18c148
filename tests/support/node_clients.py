"""Node.js clients for the tests: a script run by the installed ``node`` with npm packages
from the cache tests/support/express.py keeps (installed once, reused by later runs).

``run_node(script, env, *args)`` runs ``script`` (CommonJS) with ``env`` as its only proxy
and CA variables, as an agent started after `eval "$(portcullis env)"` would be, and
returns the JSON it printed on its last stdout line. ``require('undici')`` resolves to the
cached package (NODE_PATH). Without node or npm the test is skipped (express.py's rule).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.express import node_modules

#: undici 6 supports Node 18 and 20 and has EnvHttpProxyAgent.
UNDICI = "undici@6"


def node_major() -> int:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    done = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    return int(done.stdout.strip().lstrip("v").split(".")[0])


def run_node(script: str, env: dict[str, str], *args: str, packages: tuple[str, ...] = (UNDICI,),
             timeout: float = 60) -> Any:
    modules = node_modules(packages)
    clean = {k: v for k, v in os.environ.items()
             if not k.lower().endswith("_proxy") and not k.startswith("NODE_") and "CA_" not in k}
    with tempfile.TemporaryDirectory(prefix="portcullis-node-client-") as directory:
        path = Path(directory) / "client.js"
        path.write_text(script)
        done = subprocess.run(["node", str(path), *args], capture_output=True, text=True, timeout=timeout,
                              env={**clean, "NODE_PATH": str(modules), **env})
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"node exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])
