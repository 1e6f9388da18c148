"""Credential injection: the gateway, not the agent, holds the upstream secrets.

Rules file::

    credentials:
      - name: stripe                          # optional, used in messages
        match: {host: "api.stripe.com"}       # any match block (addons.policy.conditions)
        set_header: {Authorization: "Bearer ${env:STRIPE_SECRET_KEY}"}
      - match: {host: "db-api.internal", identity: [billing-agent]}
        set_header: {X-Api-Key: "${file:/run/secrets/db_api_key}"}
        query: {api_key: "${env:LEGACY_KEY}"}
        plain_http: true                      # also inject into http:// requests (default: https only)

The first entry whose match holds supplies the credentials. They are added only to
requests the policy decided to forward (allowed or approved), after any hold, and
replace whatever the agent sent under the same header or query name.

Every injected value is registered in the flow state (``secrets``, ``injected_headers``)
so the recorder redacts it, and it is masked in the response if the upstream echoes it,
in any spelling and charset :mod:`addons.core.secretforms` knows (the body is first decoded from
its Content-Encoding). What cannot be scrubbed safely -- an unknown Content-Encoding, a
charset that cannot be scrubbed in place and shows a secret, an unknown charset -- is
refused with a 502 ``response_not_scannable``: the agent gets exactly what is recorded.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

from mitmproxy import ctx, exceptions, http
from mitmproxy.utils import human

from addons.core import logscrub
from addons.core.flowstate import FlowState, FlowStates
from addons.core.replies import refuse, reply
from addons.core.rulefile import Where
from addons.core.secretforms import REDACTED, WIDE, Unscrubbable, charsets_for, forms_for
from addons.credentials.secretrefs import Resolved, resolve
from addons.masking.bodies import media_type
from addons.policy.conditions import Match, RequestView, compile_match
from addons.policy.engine import LoadContext, Policy, top_level_field

log = logging.getLogger("portcullis.credentials")

__all__ = ["REDACTED", "CredentialsAddon", "StreamMasker", "Unscrubbable", "mask_response", "refuse_unscannable"]
CREDENTIAL_KEYS = ("name", "match", "set_header", "query", "plain_http")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class Credential:
    label: str
    match: Match
    headers: tuple[tuple[str, Resolved], ...] = ()
    query: tuple[tuple[str, Resolved], ...] = ()
    plain_http: bool = False
    secrets: frozenset[str] = field(default=frozenset(), repr=False)


@top_level_field("credentials", type="list of {name, match, set_header, query, plain_http}",
                 example='[{match: {host: api.stripe.com}, set_header: {Authorization: "Bearer ${env:STRIPE_SECRET_KEY}"}}]',
                 see="identity.md#credential-injection",
                 summary="Upstream credentials the gateway adds to forwarded requests; agents never hold them.")
def compile_credentials(value: Any, where: Where, context: LoadContext) -> tuple[Credential, ...]:
    if not isinstance(value, list):
        where.fail("credentials must be a list of {match, set_header and/or query}")
    return tuple(_compile_one(item, i, where / i, context) for i, item in enumerate(value))


def _compile_one(item: Any, index: int, at: Where, context: LoadContext) -> Credential:
    at.mapping(item, CREDENTIAL_KEYS, "match and set_header and/or query")
    name = item.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        (at / "name").fail("name must be a non-empty string")
    label = f"credential rule {name!r}" if name else f"credentials[{index}]"
    if "match" not in item:
        at.fail(f"{label}: needs a match block (which requests get these credentials)")
    match = compile_match(item["match"], at / "match")
    if "set_header" not in item and "query" not in item:
        at.fail(f"{label}: needs set_header and/or query")
    headers = _values(item.get("set_header"), at / "set_header", context, label, header_names=True)
    query = _values(item.get("query"), at / "query", context, label, header_names=False)
    plain_http = item.get("plain_http", False)
    if not isinstance(plain_http, bool):
        (at / "plain_http").fail("plain_http must be true or false")
    # The encoded forms too, so redaction also catches a key as it appears in a query string.
    secrets = frozenset(
        form for _, r in (*headers, *query) if r.secrets for s in (*r.secrets, r.value) for form in echo_variants(s)
    )
    return Credential(label, match, headers, query, plain_http, secrets)


def _values(spec: Any, where: Where, context: LoadContext, label: str,
            header_names: bool) -> tuple[tuple[str, Resolved], ...]:
    if spec is None:
        return ()
    if not isinstance(spec, dict) or not spec:
        where.fail("expected a mapping of name -> value")
    result = []
    for key, template in spec.items():
        at = where / key
        if header_names and not HEADER_NAME.fullmatch(key):
            at.fail(f"{key!r} is not a valid header name")
        value = resolve(template, at, context, label)
        if header_names and any(c in value.value for c in "\r\n\0"):
            # Named by source, never by value: the message must not leak the secret.
            at.fail(f"{label}: the value from {', '.join(value.sources) or 'the file'} contains a line break")
        result.append((key, value))
    return tuple(result)


def echo_variants(secret: str) -> set[str]:
    """How a secret may come back or be stored: raw, JSON-escaped, URL-encoded."""
    forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
    return {f for f in forms if f}


class CredentialsAddon:
    name = "portcullis_credentials"

    def __init__(self, states: FlowStates) -> None:
        self.states = states
        self.credentials: tuple[Credential, ...] = ()
        self._running = False

    def policy_loaded(self, policy: Policy) -> None:
        """Called by the policy addon on every (re)load; secrets were resolved by the load."""
        previous, self.credentials = self.credentials, policy.settings.get("credentials", ())
        try:
            self._refuse_printing_secrets()
        except exceptions.OptionsError as exc:
            if not self._running:
                raise  # start-up: refuse to start
            self.credentials = previous
            log.error("the reloaded credentials are not used, the previous ones stay: %s", exc)
        logscrub.set_secrets(s for credential in self.credentials for s in credential.secrets)
        for credential in self.credentials:  # compile now, not on the first flow's event loop
            forms_for(credential.secrets).pattern("utf-8")

    def running(self) -> None:
        self._running = True
        logscrub.install()

    def configure(self, updated: set[str]) -> None:
        if "flow_detail" in updated:
            self._refuse_printing_secrets()

    def _refuse_printing_secrets(self) -> None:
        """Under plain mitmdump, the flow printer would log the injected values."""
        leak = _printed_by_dumper(self.credentials)
        if leak:
            raise exceptions.OptionsError(
                f"credential injection with mitmproxy's flow printer: {leak}, which would log the "
                "injected secrets; run with -q or --set flow_detail=0 (portcullis run does not print flows)"
            )

    def banner(self) -> list[str]:
        if not self.credentials:
            return []
        return [f"credentials: {len(self.credentials)} injection rules"]

    def request(self, flow: http.HTTPFlow) -> None:
        state = self.states.of(flow)
        if flow.response is not None or not state.forwarded or not self.credentials:
            return
        view = RequestView(flow, state.identity, state.groups)
        try:
            credential = next((c for c in self.credentials if c.match.holds(view)), None)
        except Exception as exc:  # noqa: BLE001 - cannot tell whether to inject: do not forward
            log.error("credential match failed for %s %s: %s", flow.request.method, flow.request.pretty_url, exc)
            self._refuse(flow, "credential_error", "the gateway could not decide which credentials apply")
            return
        if credential is None:
            return
        if flow.request.scheme != "https" and not credential.plain_http:
            self._refuse(flow, "credentials_need_https",
                         "this host's credentials are only sent over https; use an https:// URL")
            return
        request = flow.request
        for name, value in credential.headers:
            request.headers[name] = value.value  # replaces every header of that name
            state.injected_headers.add(name.lower())
        for name, value in credential.query:
            request.query[name] = value.value  # replaces every parameter of that name
        state.secrets.update(credential.secrets)
        state.emit("credentials_injected", rule=credential.label,
                   headers=[n for n, _ in credential.headers], query=[n for n, _ in credential.query])

    def _refuse(self, flow: http.HTTPFlow, error: str, reason: str) -> None:
        refuse(flow, self.states.of(flow), 403, error, reason)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A body mitmproxy will stream never reaches the response hook in one piece: mask
        it chunk by chunk, or refuse it when it is compressed and cannot be scanned."""
        state = self.states.of(flow)
        response = flow.response
        if not state.secrets or response is None or not _may_stream(response):
            return
        mask_headers(response, state.secrets)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        charset = media_type(response.headers.get("content-type", ""))[1]
        if encoding in ("", "identity") and _streamable_charset(charset):
            response.stream = StreamMasker(state.secrets)
            # Masking changes the length: frame the body by chunks instead.
            if response.headers.pop("content-length", None) is not None and flow.request.http_version == "HTTP/1.1":
                response.headers["transfer-encoding"] = "chunked"
            return
        if encoding in ("", "identity"):
            reason = f"a streamed response in charset {charset!r} cannot be checked for echoed credentials"
        else:
            reason = f"a streamed {encoding}-encoded response cannot be checked for echoed credentials"
        refuse_unscannable(flow, state, reason)
        assert flow.response is not None
        body = flow.response.content or b""
        # Drop the upstream body as it arrives; send our answer at the end.
        flow.response.stream = lambda chunk: body if chunk == b"" else []

    def response(self, flow: http.HTTPFlow) -> None:
        """Mask secrets the upstream echoed back (headers and body) before the agent sees them."""
        state = self.states.of(flow)
        if not state.secrets or flow.response is None:
            return
        try:
            masked = mask_response(flow.response, state.secrets)
        except Unscrubbable as exc:
            refuse_unscannable(flow, state, str(exc))
            return
        except Exception:  # noqa: BLE001 - whatever fails, the echo must not go out unchecked
            log.exception("echo scrubbing failed (flow %s)", flow.id)
            refuse_unscannable(flow, state, "the response could not be checked for echoed credentials")
            return
        stream = flow.response.stream
        masked += stream.count if isinstance(stream, StreamMasker) else 0
        if masked:
            state.emit("secret_echo_masked", count=masked)
            log.warning("upstream echoed an injected credential %d time(s); masked (flow %s)", masked, flow.id)


def _printed_by_dumper(credentials: tuple[Credential, ...]) -> str | None:
    try:
        detail = ctx.options.flow_detail
        dumper = ctx.master.addons.get("dumper")
    except (AttributeError, KeyError):  # no master, or no dumper option (portcullis run)
        return None
    if dumper is None or not credentials:
        return None
    if detail >= 2 and any(c.headers for c in credentials):
        return f"flow_detail={detail} prints request headers"
    if detail >= 1 and any(c.query for c in credentials):
        return f"flow_detail={detail} prints URLs with their query strings"
    return None


def _may_stream(response: http.Response) -> bool:
    """Will mitmproxy stream this body (now, or by switching mid-body)?"""
    if response.stream:
        return True
    try:
        limit = human.parse_size(ctx.options.stream_large_bodies)
    except AttributeError:  # no master: nothing streams
        return False
    if limit is None:
        return False
    try:
        return int(response.headers["content-length"]) > limit
    except (KeyError, ValueError):
        return True  # unknown length: mitmproxy may switch to streaming half-way


def refuse_unscannable(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
    """Fail closed: a body an echoed secret may hide in, and that cannot be scrubbed."""
    log.warning("refused flow %s: %s", flow.id, reason)
    state.error, state.reason = "response_not_scannable", reason
    state.emit("decided", action="block", error="response_not_scannable", reason=reason)
    reply(flow, 502, "response_not_scannable", state.decision or "error", reason=reason)


def _streamable_charset(charset: str | None) -> bool:
    """Charsets whose echoes the chunk-wise scrubber catches (it scans UTF-8 and UTF-16/32)."""
    return charset is None or charset.lower().replace("_", "-") in ("utf-8", "utf8", "us-ascii", "ascii",
                                                                     "utf-16", "utf-32", *WIDE)


def mask_headers(response: http.Response, secrets: set[str] | frozenset[str]) -> int:
    forms = forms_for(frozenset(secrets))
    count = 0
    fields = []
    for name, value in response.headers.fields:
        value, found = forms.scrub(value)
        count += found
        fields.append((name, value))
    if count:
        response.headers.fields = tuple(fields)
    return count


def mask_response(response: http.Response, secrets: set[str] | frozenset[str]) -> int:
    """Replace every spelling of the secrets in headers and body; return how many.
    Raises :class:`Unscrubbable` when the body cannot be scrubbed safely."""
    count = mask_headers(response, secrets)
    if not response.raw_content:
        return count
    try:
        body = response.get_content(strict=True)  # decoded: gzip, br, zstd, deflate
    except ValueError:
        encoding = response.headers.get("content-encoding", "")
        raise Unscrubbable(f"the body's Content-Encoding {encoding!r} cannot be decoded to check it "
                           "for echoed credentials") from None
    if body:
        declared = media_type(response.headers.get("content-type", ""))[1]
        scrubbed, found = forms_for(frozenset(secrets)).scrub_body(body, declared)
        if found:
            count += found
            response.set_content(scrubbed)  # re-encodes in the same Content-Encoding
    return count


class StreamMasker:
    """Masks secrets in a streamed, unencoded body chunk by chunk. The last
    ``longest match - 1`` bytes are held back until the next chunk, so a secret split
    across two chunks is still caught."""

    def __init__(self, secrets: set[str] | frozenset[str]) -> None:
        self.forms = forms_for(frozenset(secrets))
        self.keep = self.forms.longest() - 1
        self.pending = b""
        self.count = 0

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        data = self.pending + chunk
        for charset in charsets_for(data, None):
            data, found = self.forms.scrub(data, charset)
            self.count += found
        if chunk == b"":  # end of the body
            self.pending = b""
            return data
        cut = max(0, len(data) - self.keep)
        self.pending = data[cut:]
        return [data[:cut]] if cut else []  # an empty chunk would end a chunked body
