"""Which responses stream to the agent as they arrive, and the stream callbacks that do it.

Decided in ``responseheaders`` (addons.masking.addon), the only moment a response can
still be switched to streaming (``flow.response.stream``):

* no body mask applies: a response streams through untouched when it is an event
  stream (SSE, NDJSON), of unknown length (chunked, close-delimited), or larger than
  :data:`STREAM_ABOVE`; a small body of known length arrives in one piece anyway and
  stays buffered, so the hooks after this one still see it whole;
* a body mask applies: an SSE or NDJSON body of unknown length (how LLM APIs and MCP
  servers stream) in UTF-8 without Content-Encoding is masked event by event
  (addons.masking.streaming); anything else is buffered and masked whole, as before.

A streamed response's headers go out before any response hook runs, so the headers the
policy would set there (``X-Portcullis-Decision``, ``-Flow-Id``, upstream
``X-Portcullis-*`` stripped) are set here. When the gateway injected credentials, the
echo scrubber (credentials.StreamMasker) runs over what goes out, after the masks; what
it cannot scrub safely (compressed, another charset) is not streamed and stays with the
whole-body scrubber. The bytes sent are kept, up to the recording's body limit, in
``FlowState.sent`` for the recorder (a streamed body is not kept by mitmproxy).
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import ctx, http

from addons.core.flowstate import CONTROL_HEADER_PREFIX, FlowState, SentBody
from addons.core.replies import DECISION_HEADER, FLOW_ID_HEADER
from addons.credentials.addon import StreamMasker
from addons.masking.bodies import NDJSON_TYPES, Kind, media_type

#: Bodies of known length up to this size are buffered (nothing to gain by streaming).
STREAM_ABOVE = 64 * 1024
#: Captured beyond the recording's body limit, so the recorder redacts secrets whole
#: before it cuts.
CAPTURE_MARGIN = 64 * 1024
DEFAULT_RECORD_LIMIT = 1024 * 1024
Stream = Callable[[bytes], "bytes | list[bytes]"]


def event_kind(response: http.Response) -> Kind | None:
    mime, _ = media_type(response.headers.get("content-type", ""))
    if mime == "text/event-stream":
        return Kind.SSE
    if mime in NDJSON_TYPES:
        return Kind.NDJSON
    return None


def _length(response: http.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _identity(response: http.Response) -> bool:
    return response.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")


def _utf8(response: http.Response) -> bool:
    charset = media_type(response.headers.get("content-type", ""))[1]
    return charset is None or charset.lower().replace("_", "-") in ("utf-8", "utf8", "us-ascii", "ascii")


def worth_streaming(response: http.Response) -> bool:
    """Unmasked: stream event streams, bodies of unknown length and large bodies."""
    length = _length(response)
    return bool(response.stream) or event_kind(response) is not None or length is None or length > STREAM_ABOVE


def maskable_as_stream(response: http.Response) -> Kind | None:
    """Masked: the event kind, if this body can be masked event by event as it streams."""
    kind = event_kind(response)
    if kind is None or not _identity(response) or not _utf8(response):
        return None
    if _length(response) is not None and not response.stream:
        return None  # known length and not streamed: buffered and masked whole, as before
    return kind


def scrubbable(response: http.Response) -> bool:
    """Can the echo scrubber work on this body chunk by chunk?"""
    return _identity(response) and _utf8(response)


def start(flow: http.HTTPFlow, state: FlowState, inner: Stream | None, changes_length: bool,
          masked: str | None = None) -> None:
    """Stream this response to the agent through ``inner`` (None: as it comes), echo
    scrubbing and the capture; set the headers the policy would set later."""
    response = flow.response
    assert response is not None
    state.sent = SentBody(_record_limit() + CAPTURE_MARGIN)
    if state.secrets:
        response.stream = CapturedScrubbed(inner, state.sent, state.secrets)
        changes_length = True
    else:
        response.stream = Captured(inner, state.sent)
    state.masking.streamed = True
    headers = response.headers
    for name in [n for n in headers if n.lower().startswith(CONTROL_HEADER_PREFIX)]:
        del headers[name]
    headers[DECISION_HEADER] = state.decision or "allowed"
    headers[FLOW_ID_HEADER] = flow.id
    if masked is not None:
        headers["X-Portcullis-Masked"] = masked
    if changes_length and headers.pop("content-length", None) is not None \
            and flow.request.http_version == "HTTP/1.1":
        headers["transfer-encoding"] = "chunked"


def _record_limit() -> int:
    try:
        return int(ctx.options.portcullis_max_body_record)
    except (AttributeError, KeyError, ValueError, TypeError):  # no recorder loaded
        return DEFAULT_RECORD_LIMIT


def _chunks(produced: bytes | list[bytes]) -> list[bytes]:
    return [produced] if isinstance(produced, bytes) else list(produced)


class Captured:
    """Passes chunks through ``inner`` (or as they are) and keeps what was sent."""

    def __init__(self, inner: Stream | None, sent: SentBody) -> None:
        self.inner = inner
        self.sent = sent

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        produced = self.inner(chunk) if self.inner is not None else chunk
        for part in _chunks(produced):
            self.sent.add(part)
        return produced


class CapturedScrubbed(StreamMasker):
    """``inner``, then the credentials' echo scrubber over its output, then the capture.
    A StreamMasker itself, so the credentials addon counts what it scrubbed."""

    def __init__(self, inner: Stream | None, sent: SentBody, secrets: set[str]) -> None:
        super().__init__(secrets)
        self.inner = inner
        self.sent = sent

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        produced = b"".join(_chunks(self.inner(chunk))) if self.inner is not None else chunk
        out: list[bytes] = []
        if produced:
            out.extend(_chunks(super().__call__(produced)))
        if chunk == b"":
            out.extend(_chunks(super().__call__(b"")))
        out = [part for part in out if part]
        for part in out:
            self.sent.add(part)
        if chunk == b"":
            return b"".join(out)
        return out
