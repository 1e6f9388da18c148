"""The masking addon: rewrite what the agent receives (and what upstreams receive) so
values the policy hides never get through.

Options:
    portcullis_max_mask_body: the largest body buffered for masking (default 10m).

Responses of forwarded flows get the ``mask`` lists of every matched rule; requests
about to be forwarded get their ``mask_request`` lists. A body that cannot be masked
(streamed, larger than the limit, undecodable, nested too deeply; not JSON on a route
with path masks, e.g. ``?format=xml``; binary on any route with body masks) is never
passed on unmasked: the agent gets a 502 ``response_not_maskable`` (requests: 413/422
``request_not_maskable``), unless every masking rule says ``on_unmaskable: pass``.

Masked responses carry ``X-Portcullis-Masked: <count>``; each rule that masked something
emits a ``masked`` event with its count and the (index-folded) paths, never the values.

Streams (addons.masking.streamhooks): on routes without body masks, event streams and
bodies of unknown or large length go to the agent as they arrive; on masked routes, SSE
and NDJSON of unknown length are masked event by event as they stream
(addons.masking.streaming), with detectors following the text across LLM deltas. Such a
stream is sent with ``X-Portcullis-Masked: streamed``; one that cannot be masked ends in
an error event instead of a 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.utils import human

from addons.core.flowstate import FlowState, FlowStates
from addons.core.options import Option, register_options
from addons.core.replies import reply
from addons.credentials.addon import Unscrubbable, mask_response, refuse_unscannable
from addons.masking import streamhooks
from addons.masking.bodies import Kind, Unparseable, rewrite
from addons.masking.pseudonyms import MaskKeyError, Pseudonyms
from addons.masking.redaction import Redactor, Tally
from addons.masking.spec import Mask, uses_hash
from addons.masking.streaming import EventEditor, EventStreamMasker, refusal_event
from addons.masking.toolresults import with_tool_results
from addons.policy.engine import Policy, Rule

log = logging.getLogger("portcullis.masking")

MASKED_HEADER = "X-Portcullis-Masked"
DEFAULT_MAX_BODY = "10m"
#: Bodies at least this large are masked in a worker thread (a 5 MiB body takes most of
#: a second; smaller ones are done before a thread hand-off would pay off).
OFFLOAD_BYTES = 32 * 1024
Plan = list[tuple[Rule, tuple[Mask, ...]]]


class NotMaskable(Exception):
    def __init__(self, reason: str, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


class _DiscardUpstream:
    """Stream callback for a response we answered ourselves after its headers arrived:
    drops the upstream body chunk by chunk (never buffered) and sends ours at the end."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        return self.body if chunk == b"" else []


OPTIONS = (
    Option("portcullis_max_mask_body", str, DEFAULT_MAX_BODY,
           "Largest body (after decoding) buffered for masking, e.g. 512k, 10m. "
           "Larger bodies on masked routes are refused unless on_unmaskable: pass.",
           flag="--max-mask-body", metavar="SIZE"),
)


class MaskingAddon:
    name = "portcullis_masking"

    def __init__(self, states: FlowStates) -> None:
        self.states = states
        self.max_body = human.parse_size(DEFAULT_MAX_BODY) or 0
        self.pseudonyms = Pseudonyms()
        self.redactor = Redactor(self.pseudonyms)
        self.policy: Policy | None = None

    def load(self, loader) -> None:
        register_options(loader, OPTIONS)

    def configure(self, updated: set[str]) -> None:
        if "portcullis_max_mask_body" in updated:
            try:
                size = human.parse_size(ctx.options.portcullis_max_mask_body)
            except ValueError as exc:
                raise exceptions.OptionsError(f"portcullis_max_mask_body: {exc}") from None
            if not size or size <= 0:
                raise exceptions.OptionsError("portcullis_max_mask_body must be a positive size such as 10m")
            self.max_body = size
        if "confdir" in updated:
            self.pseudonyms.confdir = ctx.options.confdir

    def policy_loaded(self, policy: Policy) -> None:
        """Called by the policy addon on every (re)load: surface key problems early."""
        self.policy = policy
        self.pseudonyms.confdir = ctx.options.confdir
        if any(uses_hash(masks) for rule in policy.rules for masks in _mask_lists(rule)):
            try:
                self.pseudonyms.key  # noqa: B018 - loads or creates the key now
            except MaskKeyError as exc:
                log.error("masks with 'hash' cannot work, those responses will be refused: %s", exc)

    def banner(self) -> list[str]:
        if self.policy is None:
            return []
        masking = [r for r in self.policy.rules if _mask_lists(r)]
        if not masking:
            return []
        return [f"masking:  {len(masking)} rule(s), bodies up to {human.pretty_size(self.max_body)}"]

    # --- requests -------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A request body mitmproxy streams (stream_large_bodies) reaches the upstream
        # before any request hook can mask it, and switching streaming off does not hold
        # (mitmproxy re-checks per chunk). The rule that will match is not known yet, so
        # any rule for this host and method with mask_request counts: close the connection.
        if not flow.request.stream or self.policy is None:
            return
        candidates = self.policy.index.candidates(flow.request.host, flow.request.method)
        plan = [(rule, rule.extensions["mask_request"]) for rule in candidates if "mask_request" in rule.extensions]
        reason = "the request body is streamed (stream_large_bodies) and cannot be masked"
        if plan and not _passes(self.states.of(flow), plan, reason, "request"):
            log.warning("closing a streamed request to %s: %s", flow.request.pretty_url, reason)
            flow.kill()

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        state = self.states.of(flow)
        if not state.forwarded:
            return
        plan = _plan(state, "mask_request")
        if not plan:
            return
        tallies: dict[str, Tally] = {}
        try:
            for rule, masks in plan:
                self.redactor.headers(flow.request.headers, masks, tallies.setdefault(rule.name, Tally()))
            await self._mask_body_off_loop(flow.request, plan, tallies, keep_encoding=True)
        except Exception as exc:  # noqa: BLE001 - whatever fails, the body must not go out unmasked
            reason = _reason(exc)
            if _passes(state, plan, reason, "request"):
                return
            state.decision, state.error = "blocked", "request_not_maskable"
            state.reason = f"request body could not be masked: {reason}"
            too_large = isinstance(exc, NotMaskable) and exc.too_large
            reply(flow, 413 if too_large else 422, "request_not_maskable", "blocked",
                  reason=reason, rules=[r.name for r, _ in plan])
            return
        _record(state, tallies, "request")

    # --- responses ------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self.states.of(flow)
        if not state.forwarded or flow.response is None:
            return
        plan = _plan(state, "mask")
        if not plan:
            self._stream_through(flow, state)
            return
        tallies: dict[str, Tally] = {}
        state.masking.tallies = tallies
        try:
            for rule, masks in plan:
                self.redactor.headers(flow.response.headers, masks, tallies.setdefault(rule.name, Tally()))
        except Exception as exc:  # noqa: BLE001 - e.g. no pseudonym key: refuse, never leak
            problem: str | None = _reason(exc)
        else:
            if not _has_body_masks(plan) or _without_body(flow):
                self._stream_through(flow, state, str(sum(t.count for t in tallies.values())))
                return
            kind = streamhooks.maskable_as_stream(flow.response)
            if kind is not None and state.error is None:
                self._stream_masked(flow, state, plan, tallies, kind)
                return
            problem = self._streaming_problem(flow)
        if problem is None:
            return
        if _passes(state, plan, problem, "response"):
            state.masking.passed = problem
            flow.response.headers[MASKED_HEADER] = str(sum(t.count for t in tallies.values()))
            return
        self._refuse(flow, state, plan, problem)
        assert flow.response is not None
        flow.response.stream = _DiscardUpstream(flow.response.content or b"")

    async def response(self, flow: http.HTTPFlow) -> None:
        state = self.states.of(flow)
        if not state.forwarded or flow.response is None:
            return
        if state.masking.refused is not None:
            # Keep our answer as the response of record even if the body that arrived
            # after the headers was stored over it.
            _refusal_reply(flow, state, *state.masking.refused)
            return
        plan = _plan(state, "mask")
        if state.masking.streamed:  # sent as it came: only the record is left to complete
            if state.masking.stream_header is not None:
                flow.response.headers[MASKED_HEADER] = state.masking.stream_header
            _record(state, state.masking.tallies, "response")
            return
        if not plan or state.masking.passed is not None:
            return  # nothing to mask, or let through unmasked under on_unmaskable: pass
        tallies: dict[str, Tally] = state.masking.tallies
        state.masking.tallies = {}
        before = flow.response.raw_content
        if _has_body_masks(plan) and not _without_body(flow):
            try:
                await self._mask_body_off_loop(flow.response, plan, tallies, keep_encoding=False)
            except Exception as exc:  # noqa: BLE001 - fail closed: never pass it on unmasked
                reason = _reason(exc)
                if not _passes(state, plan, reason, "response"):
                    self._refuse(flow, state, plan, reason)
                else:  # passed unmasked: say so, as for a body passed at its headers
                    flow.response.headers[MASKED_HEADER] = str(sum(t.count for t in tallies.values()))
                return
        if state.secrets and flow.response.raw_content is not before:
            # Re-serialising may spell an echoed credential anew: scrub what will be sent.
            try:
                mask_response(flow.response, state.secrets)
            except Unscrubbable as exc:
                refuse_unscannable(flow, state, str(exc))
                return
            except Exception:  # noqa: BLE001 - never send a re-serialised body unchecked
                log.exception("echo scrubbing after masking failed")
                refuse_unscannable(flow, state, "the masked response could not be checked for echoed credentials")
                return
        flow.response.headers[MASKED_HEADER] = str(sum(t.count for t in tallies.values()))
        _record(state, tallies, "response")

    # --- streams ----------------------------------------------------------------------------

    def _stream_through(self, flow: http.HTTPFlow, state: FlowState, masked: str | None = None) -> None:
        """No body mask: let the body reach the agent as it arrives (addons.masking.streamhooks)."""
        response = flow.response
        assert response is not None
        if state.error is not None or _without_body(flow) or response.status_code == 101 \
                or not streamhooks.worth_streaming(response):
            return
        if state.secrets and not streamhooks.scrubbable(response):
            return  # the credentials addon scrubs (or refuses) the whole body
        state.masking.stream_header = masked
        streamhooks.start(flow, state, None, changes_length=False, masked=masked)

    def _stream_masked(self, flow: http.HTTPFlow, state: FlowState, plan: Plan, tallies: dict[str, Tally],
                       kind: Kind) -> None:
        """Mask an SSE/NDJSON body event by event as it streams (addons.masking.streaming)."""
        rules = [r.name for r, _ in plan]

        def edit_document(document: Any) -> tuple[Any, bool]:
            return _each_rule(plan, tallies, document, self.redactor.document)

        def edit_text(text: str) -> tuple[str, bool]:
            return _each_rule(plan, tallies, text, self.redactor.text)

        def problem(reason: str) -> bool:
            if _passes(state, plan, reason, "response"):
                state.masking.passed = reason
                return True
            log.warning("ending a masked stream for %s: %s", flow.request.pretty_url, reason)
            state.error, state.reason = "response_not_maskable", f"response could not be masked: {reason}"
            return False

        def refusal(reason: str) -> str:
            return refusal_event(kind, {"error": "response_not_maskable", "reason": reason, "rules": rules,
                                        "flow_id": flow.id})

        editor = EventEditor(kind, plan, self.redactor, tallies, with_tool_results(edit_document), edit_text,
                             _needs_json(plan))
        state.masking.stream_header = "streamed"
        streamhooks.start(flow, state, EventStreamMasker(editor, self.max_body, problem, refusal),
                          changes_length=True, masked="streamed")

    # --- helpers --------------------------------------------------------------------------

    def _streaming_problem(self, flow: http.HTTPFlow) -> str | None:
        """Why the body cannot be buffered for masking, judged from the headers alone."""
        assert flow.response is not None
        try:
            size: int | None = int(flow.response.headers["content-length"])
        except (KeyError, ValueError):
            size = None
        if size is not None and size > self.max_body:
            return f"response body of {size} bytes exceeds the masking limit of {self.max_body} bytes"
        # Turning streaming off again is no use: mitmproxy re-checks stream_large_bodies
        # for every chunk it buffers and would switch to streaming mid-body, unmasked.
        if flow.response.stream:
            return "the response is streamed (stream_large_bodies) and cannot be buffered for masking"
        if size is None and ctx.options.stream_large_bodies:
            return "a response of unknown length may be streamed (stream_large_bodies is set)"
        return None

    async def _mask_body_off_loop(self, message: http.Message, plan: Plan, tallies: dict[str, Tally],
                                  keep_encoding: bool) -> None:
        """Mask large bodies in a worker thread so the event loop keeps serving other
        flows meanwhile (this flow waits for the hook; nothing else touches it)."""
        if len(message.raw_content or b"") < OFFLOAD_BYTES:
            self._mask_body(message, plan, tallies, keep_encoding)
        else:
            await asyncio.to_thread(self._mask_body, message, plan, tallies, keep_encoding)

    def _mask_body(self, message: http.Message, plan: Plan, tallies: dict[str, Tally],
                   keep_encoding: bool) -> None:
        raw = message.raw_content
        if raw == b"" or not _has_body_masks(plan):
            return
        if raw is None:
            raise NotMaskable("the body was streamed and cannot be masked")
        if len(raw) > self.max_body:
            raise NotMaskable(f"body of {len(raw)} bytes exceeds the masking limit of {self.max_body} bytes", True)
        try:
            content = message.get_content(strict=True) or b""
        except ValueError as exc:
            raise NotMaskable(f"cannot decode Content-Encoding: {exc}") from None
        if len(content) > self.max_body:
            raise NotMaskable(
                f"decoded body of {len(content)} bytes exceeds the masking limit of {self.max_body} bytes", True
            )

        def edit_document(document: Any) -> tuple[Any, bool]:
            return _each_rule(plan, tallies, document, self.redactor.document)

        def edit_text(text: str) -> tuple[str, bool]:
            return _each_rule(plan, tallies, text, self.redactor.text)

        edit_json = with_tool_results(edit_document)  # MCP: JSON inside result.content[].text
        try:
            with _no_gc_pauses():
                new = rewrite(content, message.headers.get("content-type", ""), edit_json, edit_text,
                              need_json=_needs_json(plan))
        except (Unparseable, MaskKeyError) as exc:
            raise NotMaskable(str(exc)) from None
        if new is None:
            return
        if not keep_encoding:
            # Re-compressing (brotli in particular) would cost more than the masking;
            # identity is acceptable to every client.
            message.headers.pop("content-encoding", None)
        message.set_content(new)  # re-encodes if an encoding remains; fixes Content-Length

    def _refuse(self, flow: http.HTTPFlow, state: FlowState, plan: Plan, reason: str) -> None:
        rules = [r.name for r, _ in plan]
        log.warning("refusing an unmaskable response for %s: %s", flow.request.pretty_url, reason)
        state.error = "response_not_maskable"
        state.masking.refused = (reason, rules)
        _refusal_reply(flow, state, reason, rules)


def _refusal_reply(flow: http.HTTPFlow, state: FlowState, reason: str, rules: list[str]) -> None:
    reply(flow, 502, "response_not_maskable", state.decision or "allowed", reason=reason, rules=rules)


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Parsing and masking a large body allocates hundreds of thousands of containers
    and no reference cycles; the collector's passes over them cost ~20% of the time.

    Maskings run on worker threads and the collector is process-wide, so the pause is
    counted: the first masking in turns it off, the last one out restores what it was.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def _each_rule(plan: Plan, tallies: dict[str, Tally], value: Any,
               apply: Callable[[Any, tuple[Mask, ...], Tally], Any]) -> tuple[Any, bool]:
    """Apply each rule's masks in turn; True if any of them masked something."""
    changed = False
    for rule, masks in plan:
        tally = tallies.setdefault(rule.name, Tally())
        before = tally.count
        value = apply(value, masks, tally)
        changed |= tally.count > before
    return value, changed


def _mask_lists(rule: Rule) -> list[tuple[Mask, ...]]:
    return [rule.extensions[k] for k in ("mask", "mask_request") if k in rule.extensions]


def _plan(state: FlowState, key: str) -> Plan:
    verdict = state.verdict
    if verdict is None:
        return []
    return [(rule, rule.extensions[key]) for rule in verdict.matched if key in rule.extensions]


def _needs_json(plan: Plan) -> bool:
    """Path masks can only be applied to JSON: any other body must be refused."""
    return any(mask.needs_json for _, masks in plan for mask in masks)


def _has_body_masks(plan: Plan) -> bool:
    return any(mask.on_body for _, masks in plan for mask in masks)


def _without_body(flow: http.HTTPFlow) -> bool:
    assert flow.response is not None
    status = flow.response.status_code
    return flow.request.method == "HEAD" or status in (204, 304) or 100 <= status < 200


def _passes(state: FlowState, plan: Plan, reason: str, target: str) -> bool:
    """Record the problem; True if every masking rule allows passing unmasked."""
    passing = all(rule.extensions.get("on_unmaskable") == "pass" for rule, _ in plan)
    state.emit("unmaskable", target=target, reason=reason, rules=[r.name for r, _ in plan],
               action="pass" if passing else "block")
    return passing


def _reason(exc: Exception) -> str:
    if isinstance(exc, NotMaskable):
        return str(exc)
    log.exception("masking failed")
    return f"masking failed: {type(exc).__name__}"


def _record(state: FlowState, tallies: dict[str, Tally], target: str) -> None:
    for rule, tally in tallies.items():
        if tally.count:
            state.masked += tally.count
            state.emit("masked", rule=rule, count=tally.count, paths=sorted(tally.paths), target=target)
