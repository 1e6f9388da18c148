"""Rules files for the benchmarks: a realistic 10-rule policy and generated large ones.

The benchmark's allowed request is ``GET /small`` (or ``/json1k``, ``/json100k``) on the
upstream host; ``GET /admin/...`` is blocked. Generated rules come in two layouts:

* ``same-host``: every rule could apply to the benchmark's host (no host, or the same
  host), so the rule index cannot discard any of them: every rule is evaluated.
* ``spread``: rules are spread over 100 other API hosts, as in an organisation with many
  services; the host index leaves only the benchmark host's rules to evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Five JSONPath masks over the upstream's records (see bench/upstream.py).
MASK_PATHS = (
    "$.records[*].email",
    "$.records[*].phone",
    "$.records[*].card",
    "$.records[*].ssn",
    "$.records[*].token",
)


def base_rules(host: str) -> list[dict[str, Any]]:
    """Ten rules of the kind a real policy has; GET /small matches the first only."""
    return [
        {"name": "allow-reads", "match": {"host": host, "method": ["GET", "HEAD"]}, "action": "allow"},
        {"name": "no-admin", "match": {"path": "/admin/**"}, "action": "block",
         "reason": "admin endpoints are off limits"},
        {"name": "no-deletes", "match": {"host": host, "method": "DELETE"}, "action": "block"},
        {"name": "no-table-writes", "match": {"method": ["PUT", "PATCH"], "path": "/v1/tables/**"},
         "action": "block"},
        {"name": "no-large-refunds",
         "match": {"method": "POST", "path": "/v1/refunds", "json": {"$.amount": {"gt": 1000}}},
         "action": "block"},
        {"name": "no-destructive-sql",
         "match": {"path": "/v1/query", "json": {"$.statement": {"regex": "(?i)\\b(drop|truncate)\\b"}}},
         "action": "block"},
        {"name": "no-bulk-export",
         "match": {"path": "/v1/customers/export", "query": {"dry_run": "false"}}, "action": "block"},
        {"name": "no-debug-header", "match": {"headers": {"x-debug": "*"}}, "action": "block"},
        {"name": "no-internal-hosts", "match": {"host": "*.internal.example.com"}, "action": "block"},
        {"name": "health", "match": {"path": ["/health", "/status"]}, "action": "allow"},
    ]


def generated_rule(i: int, host: str, layout: str) -> dict[str, Any]:
    """Rule number i of a large file; none of them matches the benchmark's requests."""
    name = f"generated-{i}"
    if layout == "spread":
        return {"name": name, "match": {"host": f"api{i % 100}.example.com", "path": f"/v{i % 3}/svc{i}/**",
                                        "method": ["POST", "PUT"] if i % 2 else "DELETE"},
                "action": "block"}
    kind = i % 4
    if kind == 0:
        match: dict[str, Any] = {"host": host, "path": f"/v1/svc{i}/**", "method": ["POST", "PUT"]}
    elif kind == 1:
        match = {"path": f"/v1/svc{i}/items/*"}
    elif kind == 2:
        match = {"host": host, "path": f"/v2/svc{i}/**", "query": {"mode": "bulk"}}
    else:
        match = {"path": [f"/v1/svc{i}", f"/v1/svc{i}/**"], "headers": {"x-tenant": f"t{i}"}}
    return {"name": name, "match": match, "action": "block" if i % 3 else "allow"}


def policy(host: str, count: int = 10, layout: str = "same-host", masks: bool = False) -> dict[str, Any]:
    """A rules document with `count` rules (at least the ten base rules)."""
    rules = base_rules(host)
    rules += [generated_rule(i, host, layout) for i in range(len(rules), count)]
    rules = rules[:count] if count < len(rules) else rules
    if masks:
        rules.insert(0, {"name": "mask-pii", "match": {"host": host, "path": ["/json1k", "/json100k"]},
                         "mask": [{"path": p} for p in MASK_PATHS]})
    return {"version": 1, "default": "allow", "rules": rules}


def write(path: Path, document: dict[str, Any]) -> Path:
    # JSON is valid YAML, and much faster to write and parse for 10,000 rules.
    path.write_text(json.dumps(document, indent=1))
    return path
