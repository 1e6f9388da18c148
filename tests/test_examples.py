"""The demo in examples/ shows every rule of rules/default.yaml firing, through a real gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import requests

from addons.policy.engine import load_policy
from gateway.settings import DEFAULT_RULES, PROJECT_ROOT
from tests.support.gateway import GatewayProcess, free_port


def test_demo_agent_exercises_every_default_rule(tmp_path, confdir):
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "examples/demo_api.py", "--port", str(port)],
        cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    gateway = GatewayProcess(DEFAULT_RULES, confdir, ["--db", str(tmp_path / "demo.duckdb")]).start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/v1/tables", timeout=1, proxies={"http": None})
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "demo API did not start"
                time.sleep(0.1)
        env = {**os.environ, **gateway.agent_env()}
        env.pop("NO_PROXY", None)
        result = subprocess.run(
            [sys.executable, "examples/demo_agent.py", "--json", "--api", f"http://api.demo.test:{port}"],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
        )
    finally:
        gateway.stop()
        api.terminate()
        api.wait()
    steps = json.loads(result.stdout)
    decided_by = {s["rule"] for s in steps if s["rule"]}
    rules = load_policy(DEFAULT_RULES).rules
    blocking = {r.name for r in rules if r.action == "block"}
    assert blocking <= decided_by, f"rules never exercised: {blocking - decided_by}"
    by_step = {s["step"]: s for s in steps}
    assert by_step["list customers"]["decision"] == "allowed"
    assert by_step["list customers"]["status"] == 200
    assert by_step["delete a table"]["status"] == 403
    assert by_step["small refund"]["status"] == 201
    held = by_step["medium refund"]
    assert (held["status"], held["decision"]) == (202, "held")
    assert held["body"]["reason"] == "Refunds over $100 need a finance lead"
    customer = by_step["read one customer"]
    assert customer["masked"] >= 4
    assert customer["body"]["ssn"] == "[masked]"
    assert customer["body"]["card_number"].endswith("4242")
    assert "4242 4242 4242 4242" not in json.dumps(customer["body"])
    assert customer["body"]["email"].startswith("email_")
