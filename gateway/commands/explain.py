"""portcullis explain: show which rules match a request and the decision, sending nothing.

    portcullis explain --rules rules/default.yaml DELETE https://db.prod.example.com/v1/tables/users
"""

from __future__ import annotations

import argparse
import json
import sys

import addons.schema  # noqa: F401  (registers every package's rules keys)
from addons.core.flowstate import FlowState
from addons.core.rulefile import RuleFileError
from addons.core.synthetic import make_flow
from addons.policy.conditions import EvaluationError, RequestView
from addons.policy.engine import RULE_FIELDS, load_policy
from gateway import settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("explain", help="evaluate the rules for one request", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default=str(settings.DEFAULT_RULES), help="rules file")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="a request header")
    parser.add_argument("--json", dest="json_body", metavar="BODY", help="JSON request body")
    parser.add_argument("--identity", default="anonymous", help="the calling agent's identity")
    parser.add_argument("--group", action="append", default=[], help="the agent's groups")
    parser.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    parser.add_argument("method", help="the request method, e.g. DELETE")
    parser.add_argument("url", help="the request URL, e.g. https://api.example.com/v1/x")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.rules)
    except RuleFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            print(f"portcullis explain: --header needs NAME:VALUE, got {item!r}", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    body = b""
    if args.json_body is not None:
        body = args.json_body.encode()
        headers.setdefault("content-type", "application/json")
    flow = make_flow(args.method, args.url, headers, body)
    state = FlowState(flow.id)
    view = RequestView(flow, args.identity, args.group, state=state)
    try:
        verdict = policy.evaluate(view)
    except EvaluationError as exc:  # the gateway refuses such a request: say so, and why
        if args.format == "json":
            print(json.dumps({"decision": "block", "error": exc.error_code, "reason": str(exc)}, indent=2))
            return 0
        print(f"{view.method} {view.host}{view.path}")
        print(f"decision: block ({exc.error_code}): {exc}")
        return 0
    # What sql:/graphql: conditions made of the query (addons.querylang.rules).
    classified = [c["summary"] for c in state.classifications.values()]
    result = {
        "decision": verdict.action,
        "rule": verdict.rule.name if verdict.rule else None,
        "reason": verdict.reason,
        "matched": [{"name": r.name, "action": r.action, "line": r.line, "fields": list(r.extensions)}
                    for r in verdict.matched],
        "normalized": {"host": view.host, "path": view.path, "method": view.method},
        "classified": classified,
    }
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(f"{view.method} {view.host}{view.path}")
    for summary in classified:
        print(f"  {summary}")
    if not verdict.matched:
        print("  no rule matches")
    for r in verdict.matched:
        print(f"  matches {r.name} (line {r.line}): {r.action or 'no action'}")
        for key in r.extensions:  # what else the rule does, in the words of its declaration
            print(f"    {key}: {RULE_FIELDS[key].summary}")
    print(f"decision: {verdict.action}" + (f" by {verdict.rule.name}: {verdict.reason}" if verdict.rule else " (default)"))
    return 0
