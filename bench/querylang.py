"""Cost per request of a ``sql:`` rule on a typical 200-byte statement, cold and cached.

* ``cold``: every request carries a statement the cache has not seen (a different
  literal each time), so it is tokenized, parsed and classified;
* ``cached``: every request repeats one statement, so classification is a lookup.

Each is measured at two levels: the classifier alone (``addons.querylang.sql.classify``)
and the rule as the policy runs it (``SqlCondition.holds`` on a fresh RequestView per
request: reading the body's fields, finding the field, classifying, judging, recording
the classification). ``over json`` subtracts the same request judged by a plain ``json:``
condition on the same field, i.e. what the sql: key adds to a rule that reads the body.

Targets (issue 15): <= 0.2 ms cold, <= 10 us cached. Run: ``python -m bench.querylang
[--quick]``; writes bench/results/querylang.json. One core, process time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import addons.schema  # noqa: F401  (registers every package's rules keys)
from addons.core.synthetic import make_flow
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy
from addons.querylang import sql

RESULTS = Path(__file__).resolve().parent / "results" / "querylang.json"
STATEMENT = ("SELECT c.id, c.name, o.total FROM public.customers c JOIN sales.orders o "
             "ON o.customer_id = c.id WHERE o.created_at > '2024-01-01' AND c.region = '{}' "
             "ORDER BY o.total DESC LIMIT 100")


def _texts(n: int) -> list[str]:
    return [STATEMENT.format(f"EU{i:06d}") for i in range(n)]


def _per_call(fn, items: list, budget_s: float) -> float:
    """Seconds per call, over as many passes of items as fit the budget."""
    done, started = 0, time.process_time()
    while True:
        for item in items:
            fn(item)
        done += len(items)
        elapsed = time.process_time() - started
        if elapsed >= budget_s:
            return elapsed / done


def _flows(texts: list[str]) -> list:
    return [make_flow("POST", "http://acct.snowflakecomputing.com/api/v2/statements",
                      {"content-type": "application/json"},
                      json.dumps({"statement": t, "warehouse": "WH"}).encode()) for t in texts]


def run(quick: bool) -> dict:
    n = 2_000 if quick else 10_000
    budget = 0.5 if quick else 2.0
    sql_match = _match('sql: {field: "$.statement", dialect: snowflake, statement: [delete, drop]}')
    json_match = _match('json: {"$.statement": {regex: "(?i)drop"}}')
    texts = _texts(n)
    assert 180 <= len(texts[0]) <= 220, len(texts[0])

    sql.cache_clear()
    cold_classify = _per_call(lambda t: sql.classify(t, "snowflake"), texts, 0)  # one pass, all misses
    cached_text = texts[0]
    cached_classify = _per_call(lambda _t: sql.classify(cached_text, "snowflake"), [None] * 1000, budget)

    sql.cache_clear()
    cold_flows = _flows([STATEMENT.format(f"US{i:06d}") for i in range(n)])
    cold_rule = _per_call(lambda f: sql_match.holds(RequestView(f)), cold_flows, 0)
    cached_flows = _flows([cached_text] * 1000)
    cached_rule = _per_call(lambda f: sql_match.holds(RequestView(f)), cached_flows, budget)
    json_rule = _per_call(lambda f: json_match.holds(RequestView(f)), cached_flows, budget)
    us = 1e6
    return {
        "statement_bytes": len(cached_text),
        "classify_cold_us": round(cold_classify * us, 1),
        "classify_cached_us": round(cached_classify * us, 2),
        "rule_cold_us": round(cold_rule * us, 1),
        "rule_cached_us": round(cached_rule * us, 2),
        "json_rule_us": round(json_rule * us, 2),
        "rule_cold_over_json_us": round((cold_rule - json_rule) * us, 1),
        "rule_cached_over_json_us": round((cached_rule - json_rule) * us, 2),
        "targets_us": {"cold": 200, "cached": 10},
        "sqlglot": __import__("sqlglot").__version__,
        "compiled_parser": _compiled(),
    }


def _match(condition: str):
    policy = compile_policy(f"version: 1\nrules:\n  - name: r\n    match: {{{condition}}}\n    action: block\n")
    return policy.rules[0].match


def _compiled() -> bool:
    """sqlglot[c] (sqlglotc) replaces sqlglot's modules with mypyc-compiled ones."""
    import sqlglot.parser
    return not sqlglot.parser.__file__.endswith(".py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = run(args.quick)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
