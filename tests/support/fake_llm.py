"""Local fake LLM APIs that stream, on 127.0.0.1: OpenAI, Anthropic, Ollama-style NDJSON.

The wire formats are the providers' own, so the official SDKs and plain HTTP clients
read them as they would the real APIs:

* ``POST /v1/chat/completions`` -- OpenAI chat completions; with ``"stream": true`` one
  ``chat.completion.chunk`` per piece (``choices[0].delta.content``), a final chunk with
  ``finish_reason``, then ``data: [DONE]``;
* ``POST /v1/responses`` -- the OpenAI responses API: ``response.created``,
  ``response.output_text.delta`` per piece, ``response.output_text.done``,
  ``response.completed`` (each with its ``event:`` line);
* ``POST /v1/messages`` -- Anthropic messages: ``message_start``, ``content_block_start``,
  ``content_block_delta`` (``text_delta``) per piece, ``content_block_stop``,
  ``message_delta``, ``message_stop``;
* ``POST /api/chat`` -- Ollama-style NDJSON (``application/x-ndjson``), one line per piece;
* ``GET /sse?events=N&size=B`` -- N plain SSE events of about B bytes each (the bench).

Every stream is sent with chunked transfer encoding, one chunk per event, flushed, with
Nagle off, so a client sees each event when it is written. ``pieces`` is the text the
model "says"; ``delay`` seconds pass between events (``?delay=S`` for one request); with
``gate`` set, the server sends the first event and then waits (bounded) until the test
sets it, so a test can show the first event reached the client while the rest did not
exist yet. ``python -m tests.support.fake_llm [WORD...]`` serves in a process of its own
(the bench: an upstream in the client's process would share its GIL) and prints its port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

GATE_TIMEOUT_S = 5.0
DEFAULT_PIECES = ("Hello", " from", " the", " fake", " model", ".")


def sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode()


def openai_chat(pieces: list[str], model: str = "fake-gpt") -> Iterator[bytes]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]})
    for piece in pieces:
        yield sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    yield sse("[DONE]")


def openai_responses(pieces: list[str], model: str = "fake-gpt") -> Iterator[bytes]:
    response = {"id": "resp_fake", "object": "response", "created_at": 1700000000, "model": model,
                "status": "in_progress", "output": []}
    yield sse({"type": "response.created", "sequence_number": 0, "response": response}, "response.created")
    item = {"id": "msg_fake", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    yield sse({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": item},
              "response.output_item.added")
    n = 2
    for piece in pieces:
        yield sse({"type": "response.output_text.delta", "sequence_number": n, "item_id": "msg_fake",
                   "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []},
                  "response.output_text.delta")
        n += 1
    text = "".join(pieces)
    yield sse({"type": "response.output_text.done", "sequence_number": n, "item_id": "msg_fake",
               "output_index": 0, "content_index": 0, "text": text, "logprobs": []}, "response.output_text.done")
    done = {**item, "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    yield sse({"type": "response.completed", "sequence_number": n + 1,
               "response": {**response, "status": "completed", "output": [done]}}, "response.completed")


def anthropic_messages(pieces: list[str], model: str = "fake-claude") -> Iterator[bytes]:
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}
    yield sse({"type": "message_start", "message": message}, "message_start")
    yield sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              "content_block_start")
    yield sse({"type": "ping"}, "ping")
    for piece in pieces:
        yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                  "content_block_delta")
    yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    yield sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
               "usage": {"output_tokens": len(pieces)}}, "message_delta")
    yield sse({"type": "message_stop"}, "message_stop")


def ollama_chat(pieces: list[str], model: str = "fake-llama") -> Iterator[bytes]:
    for piece in pieces:
        yield (json.dumps({"model": model, "message": {"role": "assistant", "content": piece}, "done": False})
               + "\n").encode()
    yield (json.dumps({"model": model, "message": {"role": "assistant", "content": ""}, "done": True,
                       "done_reason": "stop"}) + "\n").encode()


def plain_events(count: int, size: int, bad: int = -1) -> Iterator[bytes]:
    """``count`` JSON events; event number ``bad`` is plain text carrying an SSN."""
    filler = "x" * max(0, size - 40)
    for i in range(count):
        yield b"data: ssn 123-45-6789 in plain text\n\n" if i == bad else sse({"n": i, "t": filler})


ROUTES = ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/api/chat", "/sse")


def _route(target: str) -> str:
    """The API route a request path ends in: tests put a prefix before it to pick rules."""
    path = urlsplit(target).path
    return next((route for route in ROUTES if path.endswith(route)), path)


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append((self.path, body))
        pieces = list(self.server.pieces)
        path = _route(self.path)
        model = body.get("model", "fake")
        if path == "/v1/chat/completions":
            if not body.get("stream"):
                return self._json({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
                                   "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": "".join(pieces)}}]})
            return self._stream(openai_chat(pieces, model), "text/event-stream")
        if path == "/v1/responses":
            return self._stream(openai_responses(pieces, model), "text/event-stream")
        if path == "/v1/messages":
            return self._stream(anthropic_messages(pieces, model), "text/event-stream")
        if path == "/api/chat":
            return self._stream(ollama_chat(pieces, model), "application/x-ndjson")
        self.send_error(404)

    def do_GET(self) -> None:  # noqa: N802
        if _route(self.path) != "/sse":
            return self.send_error(404)
        query = parse_qs(urlsplit(self.path).query)
        count, size = int(query.get("events", ["10"])[0]), int(query.get("size", ["100"])[0])
        events = plain_events(min(count, 100_000), min(size, 1_000_000), int(query.get("bad", ["-1"])[0]))
        if query.get("echo"):  # the request's Authorization, split across two writes
            secret = self.headers.get("Authorization", "").encode()
            half = len(secret) // 2
            events = iter([b"data: {\"echo\": \"" + secret[:half], secret[half:] + b"\"}\n\n", *events])
        self._stream(events, "text/event-stream")

    def _json(self, document: Any) -> None:
        payload = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, events: Iterator[bytes], content_type: str) -> None:
        delay = float(parse_qs(urlsplit(self.path).query).get("delay", [self.server.delay])[0])
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for number, event in enumerate(events):
            if number and delay:
                time.sleep(min(delay, 1.0))
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            if number == 0 and self.server.gate is not None:
                self.server.waiting.set()
                self.server.gate.wait(GATE_TIMEOUT_S)
                self.server.waiting.clear()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class FakeLLM(ThreadingHTTPServer):
    """The fake APIs on 127.0.0.1 (an ephemeral port); ``start()``/``stop()``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.pieces: list[str] = list(DEFAULT_PIECES)
        self.delay = 0.0
        self.gate: threading.Event | None = None
        #: Set while a stream waits at the gate (the rest of its events not written yet).
        self.waiting = threading.Event()
        self.requests: list[tuple[str, Any]] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> FakeLLM:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.shutdown()
        self.server_close()


if __name__ == "__main__":
    import sys

    server = FakeLLM()
    if len(sys.argv) > 1:
        server.pieces = sys.argv[1:]
    print(server.port, flush=True)
    server.serve_forever()
