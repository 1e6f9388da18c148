"""portcullis pending | show ID | approve ID | reject ID: decide held requests from a terminal.

    export PORTCULLIS_TOKEN=pcr_...            # a reviewer's API token (portcullis reviewer add)
    portcullis pending
    portcullis show 3f0c...
    portcullis approve 3f0c... --comment "checked with the customer"
    portcullis reject 3f0c... --comment "not this customer's order"

The running gateway decides, through the review UI's JSON API, with the same rules as the
pages (groups, no self-approval, N approvals, expiry). The token comes from
``$PORTCULLIS_TOKEN`` or a file (``--token-file`` or ``$PORTCULLIS_TOKEN_FILE``, e.g. mode
0600), never from a flag: a flag's value lands in shell history and in ``ps``.

Everything the agent controls (URL, body, justification) is printed with control
characters escaped, so a held request cannot drive the reviewer's terminal.

Exit status: 0 done; 1 the gateway refused the decision (not yours to decide, already
decided, expired); 2 the gateway could not be asked (not running, bad token, unknown id).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from addons.holds.book import CLIENT_HEADER
from addons.holds.notify import redacted_url
from gateway.commands.replay import DEFAULT_UI, TOKEN_ENV, UI_ENV

TOKEN_FILE_ENV = "PORTCULLIS_TOKEN_FILE"
#: Characters shown escaped: C0/C1 controls (but newline and tab) and bidirectional overrides.
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


class Failure(Exception):
    """The gateway could not be asked, or refused; ``status`` is the HTTP status (0: none)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def inert(text: Any, keep_newlines: bool = False) -> str:
    """``text`` safe for a terminal: escape sequences and bidi overrides shown as ``\\x1b`` etc."""
    out = []
    for char in str(text):
        code = ord(char)
        if keep_newlines and char in "\n\t":
            out.append(char)
        elif code < 0x20 or 0x7F <= code < 0xA0 or code in _BIDI:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ui", default=os.environ.get(UI_ENV, DEFAULT_UI),
                        help=f"the review UI, HOST:PORT or URL (default: ${UI_ENV} or {DEFAULT_UI})")
    parser.add_argument("--token-file", metavar="FILE", default=os.environ.get(TOKEN_FILE_ENV),
                        help=f"file holding a reviewer API token (default: ${TOKEN_FILE_ENV}; "
                             f"else the token is read from ${TOKEN_ENV})")


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    # No abbreviations: `--token` must be an error, never taken for --token-file (and echoed).
    pending = sub.add_parser("pending", help="list held requests waiting for a decision",
                             description=__doc__, formatter_class=fmt, allow_abbrev=False)
    _common(pending)
    pending.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    pending.set_defaults(handler=handle_pending)

    show = sub.add_parser("show", help="show one held request: what it does, why it is held",
                          description=__doc__, formatter_class=fmt, allow_abbrev=False)
    show.add_argument("flow_id", help="the held request's id (from portcullis pending)")
    _common(show)
    show.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    show.set_defaults(handler=handle_show)

    approve = sub.add_parser("approve", help="approve a held request", description=__doc__, formatter_class=fmt,
                             allow_abbrev=False)
    approve.add_argument("flow_id", help="the held request's id")
    approve.add_argument("--comment", default="", help="why (recorded)")
    approve.add_argument("--grant", metavar="DURATION",
                         help="also allow identical requests for this long, e.g. 15m (where the rule offers it)")
    _common(approve)
    approve.set_defaults(handler=handle_approve)

    reject = sub.add_parser("reject", help="reject a held request", description=__doc__, formatter_class=fmt,
                            allow_abbrev=False)
    reject.add_argument("flow_id", help="the held request's id")
    reject.add_argument("--comment", default="",
                        help="why (sent to the agent and recorded; needed unless the rule says reject_comment: optional)")
    _common(reject)
    reject.set_defaults(handler=handle_reject)


def read_token(args: argparse.Namespace) -> str:
    """The reviewer's token: from ``--token-file``/``$PORTCULLIS_TOKEN_FILE``, else ``$PORTCULLIS_TOKEN``."""
    if args.token_file:
        path = Path(args.token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise Failure(0, f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"portcullis: warning: {path} is readable by others (chmod 600 it)", file=sys.stderr)
        if not token:
            raise Failure(0, f"the token file {path} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise Failure(0, f"a reviewer token is needed: set ${TOKEN_ENV}, or --token-file FILE "
                         f"(or ${TOKEN_FILE_ENV}); see `portcullis reviewer add`")
    return token


class Api:
    """The review UI's JSON API, called directly (never through a proxy from the environment)."""

    def __init__(self, ui: str, token: str) -> None:
        self.base = (ui if "://" in ui else f"http://{ui}").rstrip("/")
        self.token = token
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            CLIENT_HEADER: "cli",  # the audit trail says the decision came from the terminal
            **({"Content-Type": "application/json"} if data is not None else {}),
        })
        try:
            with self.opener.open(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read() or b"{}")
            except ValueError:
                body = {}
            raise Failure(exc.code, f"{body.get('error', exc.reason)}: {body.get('message', '')}".rstrip(": ")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise Failure(0, f"cannot reach the review UI at {self.base}: {getattr(exc, 'reason', exc)} "
                             "(is the gateway running with its review UI? pass --ui HOST:PORT)") from None

    def flow_path(self, flow_id: str, action: str = "") -> str:
        return f"/api/flows/{urllib.parse.quote(flow_id, safe='')}" + (f"/{action}" if action else "")


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _run(args: argparse.Namespace, work: Any) -> int:
    try:
        return work(Api(args.ui, read_token(args)))
    except Failure as exc:
        print(f"portcullis {args.command}: {inert(exc)}", file=sys.stderr)
        return 1 if exc.status in (400, 403, 409, 410) else 2


def pending_lines(holds: list[dict[str, Any]]) -> list[str]:
    if not holds:
        return ["No held requests are waiting."]
    lines = []
    for h in holds:
        approvals = f"{len(h.get('approvals') or [])}/{h.get('approvals_required', 1)}"
        lines.append(f"{h['flow_id']}  {_ago(h.get('time_left_s') or 0):>7} left  {approvals} approvals  "
                     f"{inert(h['identity'])}  {inert(h['method'])} {inert(redacted_url(h['url']))}")
        about = h.get("body_summary") or h.get("query_summary")
        lines.append(f"    {inert(h.get('rule') or 'default')}: {inert(h.get('reason') or '')}"
                     + (f" — {inert(about)}" if about else ""))
    return lines


def handle_pending(args: argparse.Namespace) -> int:
    def work(api: Api) -> int:
        holds = api.call("GET", "/api/pending")["pending"]
        print(json.dumps(holds) if args.format == "json" else "\n".join(pending_lines(holds)))
        return 0

    return _run(args, work)


def show_lines(flow: dict[str, Any]) -> list[str]:
    status = flow["status"]
    if status == "pending":
        state = f"pending, {_ago(flow.get('time_left_s') or 0)} left"
    else:
        state = status + (f" by {flow['decided_by']}" if flow.get("decided_by") else "")
        if flow.get("decided_at"):
            state += " at " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(flow["decided_at"]))
        if flow.get("comment"):
            state += f": {flow['comment']}"
    approvals = ", ".join(a["reviewer"] for a in flow.get("approvals") or []) or "none yet"
    lines = [
        f"{inert(flow['method'])} {inert(redacted_url(flow['url']))}",
        f"  status:        {inert(state)}",
        f"  identity:      {inert(flow['identity'])}" + (f" (session {inert(flow['session_id'])})"
                                                          if flow.get("session_id") else ""),
        f"  rule:          {inert(flow.get('rule') or 'default')}: {inert(flow.get('reason') or '')}",
        f"  justification: {inert(flow.get('justification') or '(none given)')}",
        f"  approvals:     {len(flow.get('approvals') or [])} of {flow.get('approvals_required', 1)} ({inert(approvals)})",
        f"  may decide:    {', '.join(flow['approvers']) if flow.get('approvers') else 'any reviewer'}",
    ]
    if flow.get("you_may_decide") is not None:
        lines.append("  you:           " + ("may decide" if flow["you_may_decide"]
                                           else f"may not decide: {inert(flow.get('why_not') or '')}"))
    if status == "pending":
        lines.append("  grant:         " + (f"up to {_ago(flow['max_grant_s'])} (approve --grant)"
                                           if flow.get("max_grant_s") else
                                           f"not offered ({inert(flow.get('grant_unavailable') or '')})"))
    for query in flow.get("queries") or []:
        lines.append(f"  {inert(query.get('language', 'query'))}: {inert(query.get('summary', ''))}")
    size = flow.get("body_size") or 0
    lines.append(f"body ({size:,} bytes, SHA-256 {flow.get('body_sha256', '')})"
                 + (" — first 64 KiB" if flow.get("body_truncated") else "") + ":")
    body = flow.get("body") or ""
    try:
        body = json.dumps(json.loads(body), indent=2, ensure_ascii=False) if body else ""
    except ValueError:
        pass
    lines.extend(f"  {line}" for line in inert(body, keep_newlines=True).splitlines() or ["(empty)"])
    return lines


def handle_show(args: argparse.Namespace) -> int:
    def work(api: Api) -> int:
        flow = api.call("GET", api.flow_path(args.flow_id))
        print(json.dumps(flow) if args.format == "json" else "\n".join(show_lines(flow)))
        return 0

    return _run(args, work)


def handle_approve(args: argparse.Namespace) -> int:
    def work(api: Api) -> int:
        payload: dict[str, Any] = {"comment": args.comment}
        if args.grant:
            payload["grant"] = args.grant
        hold = api.call("POST", api.flow_path(args.flow_id, "approve"), payload)
        if hold["status"] == "approved":
            after = ("the agent receives it when it re-sends" if hold.get("mode") == "async"
                     else "the request is forwarded now")
            grant = f"; grant {hold['grant_id']} allows identical requests" if hold.get("grant_id") else ""
            print(f"approved {hold['flow_id']} ({inert(hold['method'])} {inert(redacted_url(hold['url']))}): "
                  f"{after}{grant}")
        else:
            left = hold["approvals_required"] - len(hold["approvals"])
            print(f"your approval of {hold['flow_id']} is recorded; {left} more needed")
        return 0

    return _run(args, work)


def handle_reject(args: argparse.Namespace) -> int:
    def work(api: Api) -> int:
        hold = api.call("POST", api.flow_path(args.flow_id, "reject"), {"comment": args.comment})
        print(f"rejected {hold['flow_id']} ({inert(hold['method'])} {inert(redacted_url(hold['url']))}); "
              "the agent receives a 403 with your comment")
        return 0

    return _run(args, work)
