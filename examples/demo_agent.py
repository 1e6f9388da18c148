#!/usr/bin/env python3
"""A scripted "agent" (no model needed) that exercises every rule in rules/default.yaml.

    eval "$(portcullis env)"            # point HTTP clients at the gateway
    python examples/demo_agent.py       # or: portcullis exec -- python examples/demo_agent.py

It only uses the standard HTTP_PROXY convention: the `requests` library picks the proxy
and the gateway's CA up from the environment. Each step prints what the gateway decided.
Held requests are sent in async mode (X-Portcullis-Wait: async), so the script does not
wait for a reviewer: it prints where the request waits for approval.
"""

from __future__ import annotations

import argparse
import json
import sys

import requests

# (what the agent tries, method, path, JSON body)
STEPS = [
    ("list customers", "GET", "/v1/customers", None),
    ("read one customer", "GET", "/v1/customers/c-1001", None),
    ("dry-run export", "GET", "/v1/customers/export?dry_run=true", None),
    ("real bulk export", "GET", "/v1/customers/export?dry_run=false", None),
    ("small refund", "POST", "/v1/refunds", {"order": "o-1", "amount": 25}),
    ("medium refund", "POST", "/v1/refunds", {"order": "o-3", "amount": 250}),
    ("huge refund", "POST", "/v1/refunds", {"order": "o-2", "amount": 25000}),
    ("harmless query", "POST", "/v1/query", {"statement": "SELECT count(*) FROM customers"}),
    ("destructive query", "POST", "/v1/query", {"statement": "DROP TABLE customers"}),
    ("delete a table", "DELETE", "/v1/tables/customers", None),
]


def run(api: str, as_json: bool) -> int:
    session = requests.Session()
    # Without this header a held request simply waits (up to the rule's timeout) for a reviewer.
    session.headers["X-Portcullis-Wait"] = "async"
    session.headers["X-Portcullis-Justification"] = "demo_agent.py exercising rules/default.yaml"
    results = []
    for what, method, path, body in STEPS:
        response = session.request(method, api + path, json=body, timeout=60)
        decision = response.headers.get("X-Portcullis-Decision", "none")
        detail = response.json() if "json" in response.headers.get("Content-Type", "") else {}
        results.append({"step": what, "method": method, "path": path, "status": response.status_code,
                        "decision": decision, "rule": detail.get("rule"), "reason": detail.get("reason"),
                        "masked": int(response.headers.get("X-Portcullis-Masked", 0)), "body": detail})
        if not as_json:
            line = f"{decision.upper():9} {response.status_code} {method:6} {path:40} ({what})"
            if detail.get("rule"):
                line += f"\n          rule {detail['rule']}: {detail.get('reason')}"
            if decision == "held":
                line += f"\n          waiting for a reviewer: {detail.get('reason')} (flow {detail.get('flow_id')})"
            if results[-1]["masked"]:
                line += f"\n          {results[-1]['masked']} values masked"
            print(line, flush=True)
    if as_json:
        print(json.dumps(results))
    if all(r["decision"] == "none" for r in results):
        print("No X-Portcullis-Decision headers: is HTTP_PROXY pointing at the gateway?", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="http://api.demo.test:8900", help="base URL of the demo API")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    return run(args.api.rstrip("/"), args.json)


if __name__ == "__main__":
    sys.exit(main())
