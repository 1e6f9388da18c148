"""A local fake Slack on 127.0.0.1: the Web API the gateway posts to, and the clicks it gets.

The gateway's ``slack:`` settings point ``api_url`` here. ``chat.postMessage`` and
``chat.update`` check the bot token and keep each message (with every version of its
blocks); ``views.open`` keeps the modals opened for a click's ``trigger_id``;
``/response/<n>`` collects the ephemeral answers sent to a click's ``response_url``.
:meth:`FakeSlack.click` is Slack's side of a button press: it builds the
``block_actions`` payload from the button in the posted message, form-encodes it, signs
it with the v0 scheme (or, for the attack tests, a wrong secret, an old timestamp, a
tampered body) and POSTs it to the review UI's Request URL; :meth:`FakeSlack.submit`
does the same for a modal's ``view_submission``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import requests


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    versions: list[list[dict[str, Any]]] = field(default_factory=list)

    def button(self, action_id: str) -> dict[str, Any] | None:
        for block in self.blocks:
            for element in block.get("elements", []) if block.get("type") == "actions" else []:
                if element.get("action_id") == action_id:
                    return element
        return None

    @property
    def status(self) -> str:
        """The text of the status line (the context block)."""
        return next(b["elements"][0]["text"] for b in self.blocks if b["type"] == "context")

    def all_text(self) -> str:
        return json.dumps(self.blocks, ensure_ascii=False)


class _Handler(BaseHTTPRequestHandler):
    server: FakeSlack
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = self.server.handle(self.path, dict(self.headers.items()), body)
        data = json.dumps(answer).encode() if not isinstance(answer, bytes) else answer
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if not isinstance(answer, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeSlack(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bot_token: str, signing_secret: str, channel: str = "C0PORTCULLIS") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bot_token, self.signing_secret, self.channel = bot_token, signing_secret, channel
        self.messages: list[Message] = []
        self.ephemeral: list[dict[str, Any]] = []
        self.views: dict[str, dict[str, Any]] = {}  # trigger id -> the modal opened with it
        self.refused_calls: list[str] = []
        self._ts = itertools.count(1)
        self._triggers: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"

    def start(self) -> FakeSlack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # --- the Web API --------------------------------------------------------------------

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Any:
        if path.startswith("/response/"):
            with self._lock:
                self.ephemeral.append({"path": path, **json.loads(body)})
            return b"ok"
        if headers.get("Authorization") != f"Bearer {self.bot_token}":
            self.refused_calls.append(path)
            return {"ok": False, "error": "invalid_auth"}
        data = json.loads(body)
        with self._lock:
            if path == "/api/chat.postMessage":
                if data.get("channel") != self.channel:
                    return {"ok": False, "error": "channel_not_found"}
                message = Message(data["channel"], f"{int(time.time())}.{next(self._ts):06d}", data["text"],
                                  data["blocks"], [data["blocks"]])
                self.messages.append(message)
                return {"ok": True, "channel": message.channel, "ts": message.ts}
            if path == "/api/views.open":
                if data.get("trigger_id") not in self._triggers:
                    return {"ok": False, "error": "invalid_trigger_id"}
                self.views[data["trigger_id"]] = data["view"]
                return {"ok": True, "view": {"id": f"V{len(self.views)}", **data["view"]}}
            if path == "/api/chat.update":
                found = next((m for m in self.messages if (m.channel, m.ts) == (data["channel"], data["ts"])), None)
                if found is None:
                    return {"ok": False, "error": "message_not_found"}
                found.text, found.blocks = data["text"], data["blocks"]
                found.versions.append(data["blocks"])
                return {"ok": True, "channel": found.channel, "ts": found.ts}
        return {"ok": False, "error": "unknown_method"}

    def message_for(self, flow_id: str, timeout: float = 10) -> Message:
        """The message whose buttons (or text) name ``flow_id``, once posted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for message in self.messages:
                    if flow_id in message.all_text():
                        return message
            time.sleep(0.05)
        raise AssertionError(f"no Slack message for {flow_id}")

    def wait_for(self, check: Any, timeout: float = 10, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := check():
                return result
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def view_for(self, flow_id: str, timeout: float = 10) -> str:
        """The trigger id of the modal opened about ``flow_id``."""
        return self.wait_for(lambda: next((t for t, v in list(self.views.items())
                                           if v.get("private_metadata") == flow_id), None),
                             timeout, f"a modal about {flow_id}")

    # --- Slack's side of a click --------------------------------------------------------

    def click(self, request_url: str, message: Message, action_id: str, user_id: str, *,
              secret: str | None = None, timestamp: int | None = None, tamper: bool = False,
              signature: str | None = None, headers: dict[str, str] | None = None,
              replay_of: requests.PreparedRequest | None = None) -> requests.Response:
        """Press a button of ``message`` as Slack member ``user_id``; the UI's answer.

        The button's own ``value`` is sent, as Slack would. ``secret``/``timestamp``/
        ``tamper``/``signature`` forge the request; ``replay_of`` re-sends one verbatim.
        """
        session = requests.Session()
        session.trust_env = False
        if replay_of is not None:
            return session.send(replay_of, timeout=10)
        button = message.button(action_id)
        assert button is not None, f"the message has no {action_id} button"
        n = len(self.ephemeral) + next(self._ts)
        payload = {
            "type": "block_actions", "user": {"id": user_id, "username": user_id.lower(), "team_id": "T0TEST"},
            "api_app_id": "A0TEST", "team": {"id": "T0TEST"}, "channel": {"id": message.channel},
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel},
            "message": {"ts": message.ts, "text": message.text, "blocks": message.blocks},
            "response_url": f"http://127.0.0.1:{self.server_address[1]}/response/{n}",
            "trigger_id": self._trigger(n),
            "actions": [{"type": "button", "action_id": action_id, "block_id": "portcullis-decide",
                         "value": button["value"], "action_ts": f"{time.time():.6f}"}],
        }
        return self._send(session, request_url, payload, secret, timestamp, tamper, signature, headers)

    def _trigger(self, n: int) -> str:
        trigger = f"{n}.{time.time_ns()}.trigger"
        self._triggers.add(trigger)
        return trigger

    def submit(self, request_url: str, trigger_id: str, user_id: str, comment: str | None,
               **forge: Any) -> requests.Response:
        """Submit the modal opened with ``trigger_id`` as ``user_id``, typing ``comment``."""
        view = self.views[trigger_id]
        payload = {"type": "view_submission", "user": {"id": user_id, "team_id": "T0TEST"}, "team": {"id": "T0TEST"},
                   "api_app_id": "A0TEST", "trigger_id": self._trigger(len(self.views) + 1000),
                   "view": {"id": "V1", "type": "modal", "callback_id": view["callback_id"],
                            "private_metadata": view["private_metadata"],
                            "state": {"values": {"reason": {"comment": {"type": "plain_text_input",
                                                                        "value": comment}}}}}}
        session = requests.Session()
        session.trust_env = False
        return self._send(session, request_url, payload, forge.get("secret"), forge.get("timestamp"),
                          False, forge.get("signature"), None)

    def _send(self, session: requests.Session, request_url: str, payload: dict[str, Any], secret: str | None,
              timestamp: int | None, tamper: bool, signature: str | None,
              headers: dict[str, str] | None) -> requests.Response:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signed = signature or sign(secret or self.signing_secret, stamp, body)
        if tamper:
            body = body.replace(b"portcullis_reject", b"portcullis_approve").replace(b"U0", b"U1", 1)
        request = requests.Request("POST", request_url, data=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signed, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            **(headers or {})})
        prepared = session.prepare_request(request)
        response = session.send(prepared, timeout=10)
        response.sent = prepared  # type: ignore[attr-defined] - for replay tests
        return response


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 signature, computed independently of the gateway's code."""
    return "v0=" + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
