"""The stream masker in process (issue 14): the detector window across event boundaries,
event framing, the LLM delta shapes, failing closed, and the masking addon's choice of
what streams (mitmproxy.test.tflow / taddons).

The property that matters: however a stream is cut -- into events, into chunks, at any
byte -- what the agent receives is masked exactly as the whole text would be.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from addons.core.flowstate import FlowStates
from addons.credentials.addon import StreamMasker
from addons.masking.addon import MaskingAddon, _each_rule
from addons.masking.bodies import Kind
from addons.masking.pseudonyms import Pseudonyms
from addons.masking.redaction import Redactor, Tally
from addons.masking.streamhooks import Captured, CapturedScrubbed
from addons.masking.streaming import (
    EventEditor,
    EventStreamMasker,
    Framer,
    TextChannel,
    recognise,
    refusal_event,
)
from addons.masking.toolresults import with_tool_results
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy
from tests.support.fake_llm import (
    anthropic_messages,
    ollama_chat,
    openai_chat,
    openai_responses,
    plain_events,
)

RULES = """
version: 1
default: allow
rules:
  - name: pii
    match: {path: "/masked/**"}
    mask:
      - {detect: [ssn, email, card]}
  - name: strict
    match: {path: "/strict/**"}
    mask: ["$..ssn"]
  - name: lenient
    match: {path: "/lenient/**"}
    mask: ["$..ssn"]
    on_unmaskable: pass
"""
POLICY = compile_policy(RULES)
RULE = POLICY.rules[0]
PLAN = [(RULE, RULE.extensions["mask"])]
MASK = RULE.extensions["mask"][0]
REDACTOR = Redactor(Pseudonyms())


def channel(detect=MASK) -> TextChannel:
    text = TextChannel(REDACTOR, {}, "$.t")
    text.add_masks([("pii", detect)])
    return text


def whole(text: str) -> str:
    return REDACTOR.detect_text(text, MASK)[0]


def fed(pieces: list[str]) -> str:
    text = channel()
    return "".join(text.feed(piece) for piece in pieces) + text.feed("", final=True)


# --- the window ---------------------------------------------------------------------------


def test_pii_split_across_four_deltas_is_masked():
    assert fed(["My SSN is ", "123", "-45", "-678", "9", "."]) == "My SSN is [masked:ssn]."


def detecting(names: str) -> object:
    return compile_policy(RULES.replace("ssn, email, card", names)).rules[0].extensions["mask"][0]


def test_only_as_many_characters_as_the_detectors_need_are_held_back():
    text = channel(detecting("ssn"))
    assert text.hold == 11 + 2  # an SSN is 11 characters; 2 more for its look-ahead
    released = text.feed("a" * 100)
    assert released == "a" * 87 and text.pending == "a" * 13
    assert channel().hold == 73 + 2  # a card number with separators
    # An e-mail address holds no space: only the word being written is held back.
    text = channel(detecting("email"))
    assert (text.hold, text.run_hold) == (0, 254 + 2)
    assert text.feed("write to zoe@exa") == "write to " and text.pending == "zoe@exa"
    assert text.feed("mple.com now") == "[masked:email] " and text.pending == "now"


def test_a_match_still_growing_is_never_cut():
    text = channel()
    out = text.feed("x" * 300 + " card 4111 1111 1111 111")
    assert "4111" not in out
    out += text.feed("1 ok" + " " * 300)
    assert "[masked:card]" in out + text.feed("", final=True)


WORDS = st.sampled_from(["123-45-6789", "4111 1111 1111 1111", "zoe@example.com", "078-05-1120",
                         "123", "-", "45", "6789", "@", ".", "com", " ", "a", "x@y.io", "\n", "é"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WORDS, max_size=40), st.data())
def test_any_split_masks_as_the_whole_text_would(words, data):
    text = "".join(words)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert fed(pieces) == whole(text)


TOKENS = st.sampled_from(["zoe@example.com", "203.0.113.7", "10.0.0.1", "a@b", ".", "@", "co", "m", " ", "\n",
                          "eyJhbGciOiJIUzI1NiJ9", ".eyJzdWIiOiIxIn0", ".c2lnbmF0dXJlc2ln", "x", "1"])
SPACELESS = detecting("email, ip, jwt")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS, max_size=40), st.data())
def test_any_split_masks_as_the_whole_text_would_for_detectors_without_spaces(words, data):
    text = "".join(words)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    stream = channel(SPACELESS)
    out = "".join(stream.feed(piece) for piece in pieces) + stream.feed("", final=True)
    assert out == REDACTOR.detect_text(text, SPACELESS)[0]


# --- streams of events -------------------------------------------------------------------


def editor(kind: Kind, plan=PLAN, need_json: bool = False) -> tuple[EventEditor, dict[str, Tally]]:
    tallies: dict[str, Tally] = {}
    edit_json = with_tool_results(lambda d: _each_rule(plan, tallies, d, REDACTOR.document))
    return EventEditor(kind, plan, REDACTOR, tallies, edit_json,
                       lambda t: _each_rule(plan, tallies, t, REDACTOR.text), need_json), tallies


def run(stream: bytes, kind: Kind, cuts: list[int], plan=PLAN, need_json: bool = False,
        passing: bool = False) -> bytes:
    masker = EventStreamMasker(editor(kind, plan, need_json)[0], 1 << 20, lambda reason: passing,
                               lambda reason: refusal_event(kind, {"error": "response_not_maskable"}))
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        produced = masker(stream[a:b])
        out += [produced] if isinstance(produced, bytes) else produced
    out.append(masker(b""))
    return b"".join(out)


PIECES = ["Call me: SSN ", "123", "-45", "-678", "9", ", card 4111 ", "1111 1111 1111", " or zoe@exa", "mple.com!"]
MASKED = "Call me: SSN [masked:ssn], card [masked:card] or [masked:email]!"
STREAMS = {
    "chat": (b"".join(openai_chat(PIECES)), Kind.SSE),
    "responses": (b"".join(openai_responses(PIECES)), Kind.SSE),
    "anthropic": (b"".join(anthropic_messages(PIECES)), Kind.SSE),
    "ollama": (b"".join(ollama_chat(PIECES)), Kind.NDJSON),
}


def text_of(shape: str, body: bytes) -> str:
    out = []
    for line in body.decode().splitlines():
        data = line[6:] if line.startswith("data: ") else line if shape == "ollama" else None
        if not data or data == "[DONE]":
            continue
        doc = json.loads(data)
        if shape == "chat":
            out += [c["delta"].get("content") or "" for c in doc["choices"]]
        elif shape == "ollama":
            out.append(doc["message"]["content"])
        elif doc.get("type") in ("response.output_text.delta", "content_block_delta"):
            out.append(doc["delta"] if shape == "responses" else doc["delta"]["text"])
    return "".join(out)


@pytest.mark.parametrize("shape", list(STREAMS))
def test_each_shape_is_masked_across_deltas_and_cut_anywhere_the_same(shape):
    stream, kind = STREAMS[shape]
    reference = run(stream, kind, [])
    assert text_of(shape, reference) == MASKED
    step = 1 if shape == "chat" else 3  # every byte boundary of one, every third of the others (time)
    for cut in range(1, len(stream), step):
        assert run(stream, kind, [cut]) == reference, cut
    assert run(stream, kind, list(range(1, len(stream)))) == reference  # one byte at a time


def test_events_without_anything_to_mask_keep_their_exact_bytes():
    stream = b"".join(plain_events(3, 80)).replace(b"\n\n", b"\r\n\r\n") + b": keep-alive\n\n"
    assert run(stream, Kind.SSE, [7, 100]) == stream
    chat = b"".join(openai_chat(["plain ", "text"]))
    assert text_of("chat", run(chat, Kind.SSE, [7, 100])) == "plain text"  # held, then released whole


def test_held_text_leaves_in_a_delta_event_before_the_end_of_its_channel():
    body = run(STREAMS["anthropic"][0], Kind.SSE, []).decode()
    names = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]


def test_crlf_split_between_chunks_is_one_line_break():
    framer = Framer(Kind.SSE)
    assert framer.feed("data: 1\r\n\r") == []
    assert framer.feed("\ndata: 2\n\n") == ["data: 1\r\n\r\n", "data: 2\n\n"]


def test_recognised_shapes():
    chat = {"choices": [{"index": 1, "delta": {"content": "a", "tool_calls": [
        {"index": 0, "function": {"arguments": "{\"x"}}]}, "finish_reason": None}]}
    assert [s.key for s in recognise(chat)[0]] == [("chat", 1, "content"), ("chat", 1, "tool", 0)]
    slots, ends = recognise({"type": "content_block_stop", "index": 2})
    assert not slots and ends(("anthropic", 2, "text")) and not ends(("anthropic", 1, "text"))
    assert recognise({"jsonrpc": "2.0", "result": {}}) == ([], None)


def test_an_event_that_cannot_be_masked_ends_the_stream():
    stream = b'data: {"ssn": "123-45-6789"}\n\ndata: ssn 123-45-6789\n\ndata: {"ssn": "1"}\n\n'
    strict = [(POLICY.rules[1], POLICY.rules[1].extensions["mask"])]
    body = run(stream, Kind.SSE, [40], plan=strict, need_json=True)
    assert body == b'data: {"ssn":"[masked]"}\n\nevent: error\ndata: {"error": "response_not_maskable"}\n\n'
    passed = run(stream, Kind.SSE, [40], plan=strict, need_json=True, passing=True)
    assert passed.endswith(b'data: ssn 123-45-6789\n\ndata: {"ssn": "1"}\n\n')


def test_passing_unmasked_releases_the_text_still_held_first():
    pii = PLAN + [(POLICY.rules[2], POLICY.rules[2].extensions["mask"])]  # lenient: needs JSON
    deltas = list(openai_chat(["SSN 123", "-45-6789 held"]))[:-2]  # no finish chunk, no [DONE]
    stream = b"".join(deltas) + b"data: not json\n\n"
    body = run(stream, Kind.SSE, [], plan=pii, need_json=True, passing=True)
    assert text_of("chat", body.replace(b"data: not json", b"")) == "SSN [masked:ssn] held"
    assert body.endswith(b"data: not json\n\n")


def test_json_inside_mcp_tool_results_and_structured_content_is_masked():
    record = {"name": "Zoë", "ssn": "123-45-6789"}
    message = {"jsonrpc": "2.0", "id": 3, "result": {
        "content": [{"type": "text", "text": json.dumps(record, indent=2)}, {"type": "text", "text": "{not json"}],
        "structuredContent": record, "isError": False}}
    strict = [(POLICY.rules[1], POLICY.rules[1].extensions["mask"])]
    body = run(b"event: message\ndata: " + json.dumps(message).encode() + b"\n\n", Kind.SSE, [9], plan=strict,
               need_json=True)
    data = json.loads(body.decode().split("data: ", 1)[1])
    inner = data["result"]["content"][0]["text"]
    assert json.loads(inner) == {"name": "Zoë", "ssn": "[masked]"} and "\n  " in inner
    assert data["result"]["structuredContent"]["ssn"] == "[masked]"
    assert data["result"]["content"][1]["text"] == "{not json"


# --- the addon: what streams ---------------------------------------------------------


def _flow(path: str, headers: dict[str, str], content: bytes | None = None):
    flow = tflow.tflow(resp=True)
    flow.request.path = path
    flow.response.headers.clear()
    for name, value in headers.items():
        flow.response.headers[name] = value
    flow.response.data.content = content
    return flow


def _decided(states: FlowStates, flow) -> None:
    state = states.of(flow)
    state.verdict = POLICY.evaluate(RequestView(flow, "anonymous", frozenset(), state=state))
    state.decision = "allowed"


SSE = {"content-type": "text/event-stream", "x-portcullis-decision": "forged"}


@pytest.mark.parametrize(("path", "headers", "expected"), [
    ("/open/x", SSE, Captured),
    ("/open/x", {"content-type": "application/json", "content-length": "20"}, None),
    ("/open/x", {"content-type": "application/json", "content-length": str(1 << 20)}, Captured),
    ("/open/x", {"content-type": "application/json"}, Captured),  # chunked
    ("/masked/x", SSE, Captured),
    ("/masked/x", {**SSE, "content-length": "100"}, None),  # known length: buffered, masked whole
    ("/masked/x", {**SSE, "content-encoding": "gzip"}, None),
    ("/masked/x", {"content-type": "application/json"}, None),
])
def test_what_streams_and_how(path, headers, expected):
    states = FlowStates()
    addon = MaskingAddon(states)
    with taddons.context(Proxyserver(), addon):
        flow = _flow(path, headers)
        _decided(states, flow)
        addon.responseheaders(flow)
        stream = flow.response.stream
        assert type(stream) is expected if expected else not stream
        if expected:
            assert flow.response.headers["X-Portcullis-Decision"] == "allowed"
            assert flow.response.headers["X-Portcullis-Flow-Id"] == flow.id
            assert isinstance(stream.inner, EventStreamMasker) == path.startswith("/masked")


def test_a_streamed_response_is_captured_for_the_recording_and_echoes_are_scrubbed():
    states = FlowStates()
    addon = MaskingAddon(states)
    with taddons.context(Proxyserver(), addon):
        flow = _flow("/open/x", SSE)
        _decided(states, flow)
        states.of(flow).secrets = {"s3cr3t-value-123"}
        addon.responseheaders(flow)
        stream = flow.response.stream
        assert isinstance(stream, CapturedScrubbed) and isinstance(stream, StreamMasker)
        sent = b"".join(stream(b"data: s3cr3t-") + stream(b"value-123\n\n") + [stream(b"")])
        assert sent == b"data: [redacted]\n\n" and bytes(states.of(flow).sent.data) == sent
        assert "content-length" not in flow.response.headers


# --- the recording of a streamed response ---------------------------------------------


def test_the_recorder_stores_what_a_stream_sent_capped_with_its_full_size():
    from addons.core.flowstate import SentBody
    from addons.recorder.rows import flow_row

    states = FlowStates()
    flow = _flow("/open/x", {"content-type": "text/event-stream"}, content=None)  # streamed: no body kept
    state = states.of(flow)
    state.sent = SentBody(limit=40)
    for chunk in (b"data: one\n\n", b"data: two\n\n", b"data: " + b"x" * 40 + b"\n\n"):
        state.sent.add(chunk)
    row = flow_row(flow, state, "allowed", cap=30, secrets=())()
    assert row["response_body"] == "data: one\n\ndata: two\n\ndata: xx"
    assert row["response_size"] == 70 and row["response_truncated"] is True
    state.sent = None
    assert flow_row(flow, state, "allowed", cap=30, secrets=())()["response_body"] is None
