"""The stream masker (addons/masking/streaming.py) where a stream is odd or masking fails,
in process: event shapes it must (not) take text from, an event larger than the limit, a
last event without its terminator, text held at the end of an NDJSON stream, and masking
that fails unexpectedly: refused, or passed as the rule says, never sent unmasked."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from addons.masking.addon import _each_rule
from addons.masking.bodies import Kind
from addons.masking.pseudonyms import Pseudonyms
from addons.masking.redaction import Redactor, Tally
from addons.masking.streaming import EventEditor, EventStreamMasker, recognise, refusal_event
from addons.policy.engine import compile_policy

POLICY = compile_policy("""
version: 1
default: allow
rules:
  - name: pii
    match: {path: "/masked/**"}
    mask:
      - {detect: [ssn]}
""")
PLAN = [(POLICY.rules[0], POLICY.rules[0].extensions["mask"])]
REDACTOR = Redactor(Pseudonyms())
SSN = "123-45-6789"


def editor(kind: Kind, edit_json: Any = None) -> EventEditor:
    tallies: dict[str, Tally] = {}
    edit_json = edit_json or (lambda d: _each_rule(PLAN, tallies, d, REDACTOR.document))
    return EventEditor(kind, PLAN, REDACTOR, tallies, edit_json,
                       lambda t: _each_rule(PLAN, tallies, t, REDACTOR.text), False)


class Problems:
    """What the masker was told, and whether the rule passes unmaskable bodies."""

    def __init__(self, passing: bool) -> None:
        self.passing = passing
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> bool:
        self.reasons.append(reason)
        return self.passing


def masker(kind: Kind, problems: Problems, max_event: int = 1 << 20, **kw: Any) -> EventStreamMasker:
    return EventStreamMasker(editor(kind, **kw), max_event, problems,
                             lambda reason: refusal_event(kind, {"error": "response_not_maskable", "reason": reason}))


def feed(stream: EventStreamMasker, *chunks: bytes) -> bytes:
    out: list[bytes] = []
    for chunk in (*chunks, b""):
        produced = stream(chunk)
        out += [produced] if isinstance(produced, bytes) else produced
    return b"".join(out)


def test_shapes_without_text_deltas_give_no_slots() -> None:
    assert recognise(["not", "an", "object"]) == ([], None)
    assert recognise({"type": "content_block_delta", "index": 0, "delta": "text"}) == ([], None)
    slots, ends = recognise({"choices": ["junk", {"index": 3, "text": "legacy completion"}]})
    assert [(s.key, s.text) for s in slots] == [(("chat", 3, "text"), "legacy completion")]


def test_ollama_generate_responses_are_a_channel_of_their_own() -> None:
    slots, ends = recognise({"response": "part", "done": False})
    assert [(s.key, s.text, s.final) for s in slots] == [(("ollama", "response"), "part", False)]
    assert ends is None
    slots, ends = recognise({"response": "", "done": True})
    assert slots[0].final and ends is not None


def test_an_event_over_the_limit_ends_the_stream_with_a_refusal() -> None:
    problems = Problems(passing=False)
    stream = masker(Kind.SSE, problems, max_event=64)
    body = feed(stream, b'data: {"text": "' + b"x" * 100, b'more"}\n\n', b'data: {"text": "later"}\n\n')
    assert problems.reasons == ["an event of the stream exceeds the masking limit of 64 characters"]
    assert body.startswith(b"event: error\ndata: ")
    assert b"xxxx" not in body and b"later" not in body  # the rest is dropped


def test_a_last_event_without_its_blank_line_is_still_masked() -> None:
    stream = masker(Kind.SSE, Problems(passing=False))
    body = feed(stream, f'data: {{"message": "ssn {SSN}"}}'.encode())
    assert SSN.encode() not in body
    assert json.loads(body.decode()[len("data: "):]) == {"message": "ssn [masked:ssn]"}


def test_text_still_held_when_an_ndjson_stream_ends_goes_out_in_an_event_of_its_shape() -> None:
    stream = masker(Kind.NDJSON, Problems(passing=False))
    first = json.dumps({"response": "my number is 123-45", "done": False}).encode() + b"\n"
    second = json.dumps({"response": "-6789", "done": False}).encode() + b"\n"
    body = feed(stream, first, second)  # cut off: no done:true event
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert "".join(doc["response"] for doc in lines) == "my number is [masked:ssn]"
    assert all(doc["done"] is False for doc in lines)
    assert SSN.encode() not in body


def broken_edit(document: Any) -> tuple[Any, bool]:
    raise RuntimeError("masker bug")


def test_masking_that_fails_unexpectedly_refuses_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    problems = Problems(passing=False)
    stream = masker(Kind.SSE, problems, edit_json=broken_edit)
    with caplog.at_level(logging.ERROR, "portcullis.masking"):
        body = feed(stream, f'data: {{"ssn": "{SSN}"}}\n\n'.encode(), b'data: {"n": 2}\n\n')
    assert problems.reasons == ["masking failed: RuntimeError"]
    assert "masking a streamed event failed" in caplog.text
    assert SSN.encode() not in body and body.startswith(b"event: error\n")


def test_a_failure_at_the_end_of_the_stream_refuses_what_was_held() -> None:
    problems = Problems(passing=False)
    stream = masker(Kind.SSE, problems)

    def finish() -> str:
        raise RuntimeError("flush bug")

    stream.editor.finish = finish  # type: ignore[method-assign]
    body = feed(stream, b'data: {"choices": [{"index": 0, "delta": {"content": "held 123-45"}}]}\n\n')
    assert problems.reasons == ["masking failed: RuntimeError"]
    assert b"123-45" not in body
    assert body.endswith(refusal_event(Kind.SSE, {"error": "response_not_maskable",
                                                  "reason": "masking failed: RuntimeError"}).encode())


def test_passing_after_a_failure_drops_held_text_that_cannot_be_flushed() -> None:
    problems = Problems(passing=True)
    stream = masker(Kind.SSE, problems)

    def finish() -> str:
        raise RuntimeError("flush bug")

    stream.editor.finish = finish  # type: ignore[method-assign]
    plain = b'data: {"note": "nothing to mask"}\n\n'
    body = feed(stream, b'data: {"choices": [{"index": 0, "delta": {"content": "held 123-45"}}]}\n\n', plain)
    assert problems.reasons == ["masking failed: RuntimeError"]
    assert b"123-45" not in body  # held text that could not be masked is dropped, not sent
    assert body.endswith(plain) and b"event: error" not in body  # passed, as the rule says
