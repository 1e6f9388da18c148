"""Masking a response while it streams: server-sent events and NDJSON, event by event.

LLM APIs and MCP servers stream: an agent reads the first tokens while the rest are
being generated, so buffering the whole body to mask it costs the agent the stream.
:class:`EventStreamMasker` is a mitmproxy stream callback (``flow.response.stream``):
it cuts the bytes into events (SSE: up to a blank line; NDJSON: a line), masks each one
as :func:`addons.masking.bodies.rewrite` masks the events of a whole body, and sends it
on at once.

Text that arrives in pieces. A model's answer streams as deltas (``"123"``, ``"-45"``,
``"-678"``, ``"9"``): no single event holds the SSN, so detectors run over the text of a
*channel* -- the concatenated deltas of one choice / content block / output item --
through :class:`TextChannel`, which holds back only the last characters a detector
could still need (its :attr:`~addons.masking.detectors.Detector.window`) and releases
the rest, masked, in the event that brought it (for detectors whose matches
cannot contain spaces, such as e-mail addresses, only the word the text ends with). Held text goes out with the channel's
next delta, or, when the channel ends (finish_reason, ``content_block_stop``,
``response.output_text.done``, ``[DONE]``, the end of the body), in one extra delta
event made from the channel's last one. :func:`recognise` knows the common shapes:
OpenAI chat completions (``choices[].delta.content``, ``refusal``, tool-call
``arguments``), the OpenAI responses API (``response.*.delta``), Anthropic messages
(``content_block_delta``: ``text``, ``partial_json``, ``thinking``) and Ollama NDJSON.
Everything else is masked event by event, as documents.

Fail closed: an event that cannot be masked (not JSON under path masks, nested too
deeply, larger than the masking limit) ends what the agent receives with an error
event (``response_not_maskable``) and nothing more of the upstream's body, unless the
rules say ``on_unmaskable: pass``.

Plain data apart from the :class:`Mask`/:class:`Rule` objects it is given: no mitmproxy.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from addons.masking.bodies import (
    _LINE_BREAK,
    JsonEdit,
    Kind,
    TextEdit,
    Unparseable,
    _edit_event,
    dump_json,
    edit_json_text,
    parse_json,
)
from addons.masking.detectors import DETECTORS, find_all
from addons.masking.jsonselect import path_of, render
from addons.masking.redaction import Redactor, Tally
from addons.masking.spec import Mask

log = logging.getLogger("portcullis.masking")

#: Released text kept as context for the next scan (look-behinds need a few characters).
CONTEXT = 64
#: Hold for detectors without a bounded match length (tokens, key blocks), and how far a
#: token still growing at the end of the text may extend it.
UNBOUNDED_HOLD = 512
MAX_HOLD = 8192
#: Characters after a match its look-aheads examine ("123-45-6789" + "0" is no SSN).
LOOKAHEAD = 2

Plan = list[tuple[Any, tuple[Mask, ...]]]  # (rule, masks), as the masking addon builds it
Key = tuple[Any, ...]
Ends = Callable[[Key], bool]
_ALL: Ends = lambda key: True  # noqa: E731 - a predicate constant


@dataclass
class Slot:
    """One streamed piece of text in an event: ``container[field]``, of channel ``key``."""

    key: Key
    container: dict[str, Any]
    field: str
    path: tuple[Any, ...]
    final: bool = False

    @property
    def text(self) -> str:
        value = self.container.get(self.field)
        return value if isinstance(value, str) else ""


def recognise(doc: Any) -> tuple[list[Slot], Ends | None]:
    """The text deltas in one event, and which channels the event ends (None: none)."""
    if not isinstance(doc, dict):
        return [], None
    kind = doc.get("type")
    if isinstance(kind, str):
        return _typed(doc, kind)
    choices = doc.get("choices")
    if isinstance(choices, list):
        return _chat(choices)
    if "done" in doc:  # Ollama /api/generate and /api/chat
        slots = []
        if isinstance(doc.get("response"), str):
            slots.append(Slot(("ollama", "response"), doc, "response", ("response",)))
        message = doc.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            slots.append(Slot(("ollama", "content"), message, "content", ("message", "content")))
        done = doc.get("done") is True
        for slot in slots:
            slot.final = done
        return slots, _ALL if done else None
    return [], None


def _typed(doc: dict[str, Any], kind: str) -> tuple[list[Slot], Ends | None]:
    if kind == "content_block_delta":  # Anthropic
        delta, index = doc.get("delta"), doc.get("index")
        if isinstance(delta, dict):
            return [Slot(("anthropic", index, name), delta, name, ("delta", name))
                    for name in ("text", "partial_json", "thinking") if isinstance(delta.get(name), str)], None
        return [], None
    if kind == "content_block_stop":
        index = doc.get("index")
        return [], lambda key: key[:2] == ("anthropic", index)
    if kind in ("message_delta", "message_stop", "error", "response.completed", "response.failed",
                "response.incomplete", "response.done"):
        return [], _ALL
    if kind.startswith("response.") and kind.endswith(".delta") and isinstance(doc.get("delta"), str):
        key = ("responses", kind[:-6], doc.get("item_id"), doc.get("output_index"), doc.get("content_index"))
        return [Slot(key, doc, "delta", ("delta",))], None
    if kind.startswith("response.") and kind.endswith(".done"):
        ended = ("responses", kind[:-5], doc.get("item_id"), doc.get("output_index"), doc.get("content_index"))
        return [], lambda key: key == ended
    return [], None


def _chat(choices: list[Any]) -> tuple[list[Slot], Ends | None]:
    """OpenAI chat completions chunks (and the legacy completions' ``choices[].text``)."""
    slots: list[Slot] = []
    finished: set[Any] = set()
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        final = choice.get("finish_reason") is not None
        if final:
            finished.add(index)
        delta = choice.get("delta")
        base = ("choices", position)
        if isinstance(delta, dict):
            for name in ("content", "refusal", "reasoning_content", "reasoning"):
                if isinstance(delta.get(name), str):
                    slots.append(Slot(("chat", index, name), delta, name, (*base, "delta", name), final))
            calls = delta.get("tool_calls")
            for number, call in enumerate(calls if isinstance(calls, list) else []):
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    slots.append(Slot(("chat", index, "tool", call.get("index", number)), function, "arguments",
                                      (*base, "delta", "tool_calls", number, "function", "arguments"), final))
        elif isinstance(choice.get("text"), str):
            slots.append(Slot(("chat", index, "text"), choice, "text", (*base, "text"), final))
    if not finished:
        return slots, None
    return slots, lambda key: key[0] == "chat" and key[1] in finished


# --- one channel's text ---------------------------------------------------------------


@dataclass
class TextChannel:
    """The text of one channel, released masked as soon as no detector can need it.

    ``context`` is the tail of what was released (original text, for look-behinds);
    ``pending`` what is held. A match that ends in the held part is never released
    until the text after it is known, nor is text within ``hold`` characters of the end,
    which could still be the start of a match: so no split changes what is masked."""

    redactor: Redactor
    tallies: dict[str, Tally]
    where: str
    masks: dict[str, tuple[str, Mask]] = field(default_factory=dict)  # detector -> (rule, mask)
    context: str = ""
    pending: str = ""
    #: Characters always held: the longest window of a detector whose matches may hold spaces.
    hold: int = 0
    #: Longest trailing run of non-space characters held for the detectors whose matches
    #: cannot contain spaces (an e-mail address still being written), 0 if none.
    run_hold: int = 0
    #: A detector with spaces and no bounded length: hold its trailing token whole too.
    unbounded: bool = False

    def add_masks(self, masks: list[tuple[str, Mask]]) -> None:
        for rule, mask in masks:
            for name in mask.detect:
                if name in self.masks:
                    continue
                self.masks[name] = (rule, mask)
                detector = DETECTORS[name]
                if not detector.spaces:
                    self.run_hold = max(self.run_hold, (detector.window or MAX_HOLD) + LOOKAHEAD)
                    continue
                self.unbounded |= detector.window is None
                self.hold = max(self.hold, (detector.window or UNBOUNDED_HOLD) + LOOKAHEAD)

    def feed(self, text: str, final: bool = False) -> str:
        """Add ``text``; return what can be released now, masked (everything if final)."""
        self.pending += text
        full = self.context + self.pending
        base = len(self.context)
        spans = find_all(full, tuple(self.masks))
        cut = len(full) if final else self._cut(full, spans)
        cut = max(cut, base)
        out: list[str] = []
        last = base
        for start, end, name in spans:
            if end <= base or end > cut:
                continue
            start = max(start, base)
            rule, mask = self.masks[name]
            out.append(full[last:start])
            out.append(self.redactor._replace_span(full[start:end], name, mask.replacement))
            self.tallies.setdefault(rule, Tally()).add(self.where)
            last = end
        out.append(full[last:cut])
        self.context = full[:cut][-CONTEXT:]
        self.pending = full[cut:]
        return "".join(out)

    def _cut(self, full: str, spans: list[tuple[int, int, str]]) -> int:
        hold = self.hold
        if self.run_hold or self.unbounded:  # a token still growing at the end stays whole
            run = len(_TRAILING_TOKEN.search(full).group())  # type: ignore[union-attr]
            hold = max(hold, min(run, self.run_hold), min(run, MAX_HOLD) if self.unbounded else 0)
        cut = len(full) - hold
        for start, end, _ in spans:
            if start < cut < end:
                return start
        return cut


_TRAILING_TOKEN = re.compile(r"\S*\Z")


# --- the events of a stream --------------------------------------------------------------


@dataclass
class _Channel:
    text: TextChannel
    template: str  # the data of its last delta event (the shape of a flush event)
    event_line: str  # its "event: ..." line (SSE), "" if none


class EventEditor:
    """Masks the events of one stream in order, with text channels across them."""

    def __init__(self, kind: Kind, plan: Plan, redactor: Redactor, tallies: dict[str, Tally],
                 edit_json: JsonEdit, edit_text: TextEdit, need_json: bool) -> None:
        self.kind = kind
        self.plan = plan
        self.redactor = redactor
        self.tallies = tallies
        self.edit_json = edit_json
        self.edit_text = edit_text
        self.need_json = need_json
        self.channels: dict[Key, _Channel] = {}
        self._before: list[str] = []  # flush events to send before the current one
        self._event_line = ""
        self._data = ""

    # One event: its text in, what to send out.
    def event(self, piece: str) -> str:
        self._before = []
        if self.kind is Kind.SSE:
            edited = self._sse(piece)
        elif piece.strip():
            line, brk = _split_break(piece)
            self._event_line, self._data = "", line
            new, changed = edit_json_text(line, self._json, self._text, self.need_json)
            edited = new + brk if changed else piece
        else:
            edited = piece
        return "".join(self._before) + edited

    def finish(self) -> str:
        """The end of the body: release every channel's held text."""
        self._before = []
        self._flush(_ALL)
        return "".join(self._before)

    def _sse(self, piece: str) -> str:
        parts = _LINE_BREAK.split(piece)
        lines, breaks = parts[0::2], [*parts[1::2], ""]
        data = [i for i, line in enumerate(lines) if line.startswith("data:")]
        if not data:
            return piece
        self._event_line = next((line + breaks[i] for i, line in enumerate(lines) if line.startswith("event:")), "")
        self._data = "\n".join(_field_value(lines[i]) for i in data)
        if not _edit_event(lines, breaks, data, self._json, self._text, self.need_json):
            return piece
        return "".join(line + brk for line, brk in zip(lines, breaks, strict=True))

    def _text(self, text: str) -> tuple[str, bool]:
        self._flush(_ALL)  # "[DONE]" and other words end what came before
        return self.edit_text(text)

    def _json(self, document: Any) -> tuple[Any, bool]:
        slots, ends = recognise(document)
        if ends is not None:
            keys = {slot.key for slot in slots}
            self._flush(lambda key: ends(key) and key not in keys)
        if not slots:
            return self.edit_json(document)
        originals = [slot.text for slot in slots]
        applying = [self._masks_for(document, slot) for slot in slots]
        for slot in slots:
            slot.container[slot.field] = ""
        new, changed = self.edit_json(document)
        for slot, text, (whole, masks) in zip(slots, originals, applying, strict=True):
            if whole:  # a mask replaces the value itself: what it did stands
                continue
            if not masks and slot.key not in self.channels:
                slot.container[slot.field] = text
                continue
            channel = self._channel(slot, masks)
            released = channel.text.feed(text, slot.final)
            slot.container[slot.field] = released
            changed |= released != text
            if slot.final:
                del self.channels[slot.key]
        return new, changed

    def _channel(self, slot: Slot, masks: list[tuple[str, Mask]]) -> _Channel:
        channel = self.channels.get(slot.key)
        if channel is None:
            text = TextChannel(self.redactor, self.tallies, render(slot.path))
            channel = self.channels[slot.key] = _Channel(text, self._data, self._event_line)
        channel.text.add_masks(masks)
        channel.template, channel.event_line = self._data, self._event_line
        return channel

    def _masks_for(self, document: Any, slot: Slot) -> tuple[bool, list[tuple[str, Mask]]]:
        """(a mask replaces the slot's value whole, the detecting masks that reach it)."""
        masks: list[tuple[str, Mask]] = []
        for rule, rule_masks in self.plan:
            for mask in rule_masks:
                if not mask.on_body:
                    continue
                if mask.selector is not None:
                    selected = any(slot.path[:len(p)] == p for p in
                                   (path_of(loc.link) for loc in mask.selector.locate(document)))
                    if not selected:
                        continue
                    if not mask.detect:
                        return True, []
                if mask.detect:
                    masks.append((rule.name, mask))
        return False, masks

    def _flush(self, ends: Ends) -> None:
        for key in [k for k in self.channels if ends(k)]:
            channel = self.channels.pop(key)
            text = channel.text.feed("", final=True)
            if text:
                self._before.append(self._flush_event(key, channel, text))

    def _flush_event(self, key: Key, channel: _Channel, text: str) -> str:
        """The channel's last delta event again, carrying only the released text."""
        document = parse_json(channel.template)
        for slot in recognise(document)[0]:
            slot.container[slot.field] = text if slot.key == key else ""
        data = dump_json(document).decode("utf-8")
        if self.kind is Kind.SSE:
            return f"{channel.event_line}data: {data}\n\n"
        return data + "\n"


def _split_break(line: str) -> tuple[str, str]:
    stripped = line.rstrip("\r\n")
    return stripped, line[len(stripped):]


def _field_value(line: str) -> str:
    value = line[5:]
    return value[1:] if value.startswith(" ") else value


# --- bytes in, bytes out: the stream callback --------------------------------------------


class Framer:
    """Cuts decoded text into whole events: SSE up to a blank line, NDJSON by line."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.buffer = ""

    def feed(self, text: str, final: bool = False) -> list[str]:
        self.buffer += text
        pieces: list[str] = []
        start = 0
        line_start = 0
        for match in _LINE_BREAK.finditer(self.buffer):
            if match.group() == "\r" and match.end() == len(self.buffer) and not final:
                break  # may be the first half of CRLF
            empty = match.start() == line_start
            line_start = match.end()
            if self.kind is Kind.NDJSON or empty:
                pieces.append(self.buffer[start:match.end()])
                start = match.end()
        if final and start < len(self.buffer):
            pieces.append(self.buffer[start:])
            start = len(self.buffer)
        self.buffer = self.buffer[start:]
        return pieces


class EventStreamMasker:
    """``flow.response.stream`` for a masked SSE/NDJSON response (UTF-8, no Content-Encoding).

    ``problem(reason)`` is told when something cannot be masked and answers whether to
    pass the rest unmasked (``on_unmaskable: pass``); otherwise ``refusal(reason)`` is the
    last thing the agent receives (an error event) and the rest of the body is dropped."""

    def __init__(self, editor: EventEditor, max_event: int, problem: Callable[[str], bool],
                 refusal: Callable[[str], str]) -> None:
        self.editor = editor
        self.framer = Framer(editor.kind)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.max_event = max_event
        self.problem = problem
        self.refusal = refusal
        self.state = "masking"  # | "passing" | "refused"

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        final = chunk == b""
        if self.state == "refused":
            return b"" if final else []
        if self.state == "passing":
            return chunk if final or chunk else []
        data = self._mask(chunk, final).encode("utf-8")
        if final:
            return data
        return [data] if data else []

    def _mask(self, chunk: bytes, final: bool) -> str:
        out: list[str] = []
        pieces = self.framer.feed(self.decoder.decode(chunk, final), final)
        for done, piece in enumerate(pieces):
            try:
                out.append(self.editor.event(piece))
            except Exception as exc:  # noqa: BLE001 - whatever fails, the event must not go out unmasked
                return "".join(out) + self._fail(_reason(exc), "".join(pieces[done:]) + self.framer.buffer)
        if len(self.framer.buffer) > self.max_event:
            reason = f"an event of the stream exceeds the masking limit of {self.max_event} characters"
            return "".join(out) + self._fail(reason, self.framer.buffer)
        if final:
            try:
                out.append(self.editor.finish())
            except Exception as exc:  # noqa: BLE001
                return "".join(out) + self._fail(_reason(exc), "")
        return "".join(out)

    def _fail(self, reason: str, unsent: str) -> str:
        self.framer.buffer = ""
        if self.problem(reason):
            self.state = "passing"  # on_unmaskable: pass -- the rest goes out as it comes
            try:
                held = self.editor.finish()  # text the channels still hold goes first
            except Exception:  # noqa: BLE001 - it cannot be masked either: it is dropped
                held = ""
            return held + unsent
        self.state = "refused"
        return self.refusal(reason)


def _reason(exc: Exception) -> str:
    if isinstance(exc, Unparseable):
        return str(exc)
    log.exception("masking a streamed event failed")
    return f"masking failed: {type(exc).__name__}"


def refusal_event(kind: Kind, body: dict[str, Any]) -> str:
    """The error the agent receives in place of the rest of a stream."""
    data = json.dumps(body, ensure_ascii=False)
    return f"event: error\ndata: {data}\n\n" if kind is Kind.SSE else data + "\n"
