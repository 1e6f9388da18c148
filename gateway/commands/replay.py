"""portcullis replay: re-send recorded requests through the running gateway's policy.

    portcullis replay FLOW_ID
    portcullis replay --session SESSION_ID [--continue]

The running gateway does the work (rules evaluated again, credentials injected as
configured now, the replay recorded with ``replay_of``); this command asks it through
the review UI's API as a reviewer, who is recorded as the replay's actor:

    export PORTCULLIS_TOKEN=pcr_...     # from `portcullis reviewer add`
    portcullis replay --ui 127.0.0.1:8081 3f9a...

One line per flow: the original's status and decision, then the replay's. A session is
replayed in recorded order and stops at the first replay that is blocked, rejected or
held for approval (a held replay stays in the review queue), unless ``--continue``.

Exit status: 0 every replay was forwarded; 1 a replay was not (blocked, held, error);
2 the gateway could not be asked (not running, bad token, unknown flow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_UI = "127.0.0.1:8081"
TOKEN_ENV = "PORTCULLIS_TOKEN"
UI_ENV = "PORTCULLIS_UI"
#: How long the gateway waits for each replay to finish (or be held) before answering.
WAIT_S = 30.0
FORWARDED = ("allowed", "approved")


class Failure(Exception):
    """The gateway could not be asked; the message says why."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("replay", help="re-send recorded requests through the policy",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("flow_id", nargs="?", help="the recorded flow to replay")
    target.add_argument("--session", metavar="SESSION_ID", help="replay every flow of a session, in order")
    parser.add_argument("--continue", dest="keep_going", action="store_true",
                        help="do not stop at a replay that is blocked or held")
    parser.add_argument("--ui", default=os.environ.get(UI_ENV, DEFAULT_UI),
                        help=f"the review UI, HOST:PORT or URL (default: ${UI_ENV} or {DEFAULT_UI})")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"a reviewer API token (default: ${TOKEN_ENV})")
    parser.add_argument("--wait", type=float, default=WAIT_S,
                        help=f"seconds to wait for each replay (default {WAIT_S:g})")
    parser.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    parser.set_defaults(handler=handle)


class Client:
    """The review UI's JSON API, called directly (never through a proxy from the environment)."""

    def __init__(self, ui: str, token: str) -> None:
        self.base = (ui if "://" in ui else f"http://{ui}").rstrip("/")
        self.token = token
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {}),
        })
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read() or b"{}")
            except ValueError:
                body = {}
            raise Failure(f"{exc.code} {body.get('error', exc.reason)}: "
                          f"{body.get('message', '')}".rstrip(": ")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Failure(f"cannot reach the review UI at {self.base}: {reason} "
                          "(is the gateway running with --reviewers? pass --ui HOST:PORT)") from None

    def replay(self, flow_id: str, wait: float) -> dict[str, Any]:
        return self.call("POST", f"/api/flows/{urllib.parse.quote(flow_id, safe='')}/replay",
                         {"wait": wait}, timeout=wait + 30)

    def session_flows(self, session_id: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"id": session_id})
        return self.call("GET", f"/api/audit/session?{query}")["flows"]


def describe(status: Any, decision: Any) -> str:
    return f"{status if status is not None else '---'} {decision or '?'}"


def line(result: dict[str, Any]) -> str:
    original = result.get("original") or {}
    new = describe(result.get("status_code"), result.get("decision"))
    if result.get("state") == "held":
        new = "held for approval"
    elif result.get("state") == "pending":
        new = "still running"
    extra = ""
    if result.get("rules"):
        extra += f" [{', '.join(result['rules'])}]"
    if result.get("error"):
        extra += f" ({result['error']})"
    request = result.get("request") or ""
    return (f"{result.get('replay_of')}  {request}  was {describe(original.get('status_code'), original.get('decision'))}"
            f"  now {new}{extra}  -> {result.get('flow_id')}")


def forwarded(result: dict[str, Any]) -> bool:
    return result.get("state") == "done" and result.get("decision") in FORWARDED


def handle(args: argparse.Namespace) -> int:
    if not args.token:
        print(f"portcullis replay: a reviewer token is needed: --token or ${TOKEN_ENV}", file=sys.stderr)
        return 2
    client = Client(args.ui, args.token)
    try:
        flow_ids = [args.flow_id] if args.flow_id else \
            [f["id"] for f in client.session_flows(args.session) if not f.get("replay_of")]
    except Failure as exc:
        print(f"portcullis replay: {exc}", file=sys.stderr)
        return 2
    if not flow_ids:
        print(f"portcullis replay: session {args.session} has no recorded flows", file=sys.stderr)
        return 2
    status = 0
    for index, flow_id in enumerate(flow_ids):
        try:
            result = client.replay(flow_id, args.wait)
        except Failure as exc:
            print(f"{flow_id}  not replayed: {exc}", file=sys.stderr)
            if not args.keep_going or len(flow_ids) == 1:
                return 2
            status = max(status, 1)
            continue
        print(json.dumps(result) if args.format == "json" else line(result), flush=True)
        if not forwarded(result):
            status = max(status, 1)
            left = len(flow_ids) - index - 1
            if not args.keep_going and left:
                print(f"stopped: the replay of {flow_id} was not forwarded; {left} flows not replayed "
                      "(--continue replays them anyway)", file=sys.stderr)
                break
    return status
