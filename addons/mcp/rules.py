"""The ``mcp:`` match key and the ``deny_as`` rule key.

::

    mcp:
      method: tools/call            # glob or list: the JSON-RPC method
      tool: "delete_*"              # glob or list on params.name of tools/call
      arguments:                    # typed, fail-closed conditions, as json:, on
        "$.path": {regex: "^/etc"}  #   params.arguments of tools/call / prompts/get
      resource: "file:///secrets/**"  # glob or list on params.uri of resources/*
      list: hide                    # hide (default) | show: whether a tool this rule
                                    #   blocks is removed from tools/list results

Every listed condition must hold for one message. A batch matches when any of its
messages does; addons.mcp.addon also judges each element alone and lets the strongest
verdict stand, so a batch can neither hide a blocked call behind an allowed one nor
slip past ``default: block`` through a rule that allows its other element.

The messages are read from the request's fields the way every field condition reads
them (addons.policy.fields: keys case-folded, each ambiguous reading judged and required
to agree). A body that is JSON-RPC but cannot be judged (a method or tool name that is
not a string, arguments that are not an object, a batch element that is not a request)
is an EvaluationError: the request is refused (so is a POST body the policy cannot
read at all, as for ``json:``). A request that is not a JSON-RPC POST does not match.

``deny_as`` picks the denial shape of a rule's refusals (addons.core.replies):
``jsonrpc`` (the default for JSON-RPC requests), ``tool_result`` (a ``tools/call`` is
answered as a failed tool, ``isError: true``), ``provider`` (the OpenAI/Anthropic error
shape, the default on their hosts) or ``json``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from addons.core.rulefile import Where
from addons.mcp import jsonrpc
from addons.policy.conditions import (
    EvaluationError,
    Glob,
    JsonCondition,
    RequestView,
    compile_field_condition,
    match_key,
)
from addons.policy.engine import rule_field

MCP_KEYS = ("method", "tool", "arguments", "resource", "list")
DENY_AS = ("jsonrpc", "tool_result", "provider", "json")


@dataclass(frozen=True)
class ListProbe:
    """Judging a synthetic ``tools/call`` for ``tools/list`` filtering: conditions on
    arguments (unknown) count as ``assume``; rules with ``list: show`` never match."""

    assume: bool


#: flow -> the element of a batch being judged alone (int), or a ListProbe.
_focus: weakref.WeakKeyDictionary[Any, int | ListProbe] = weakref.WeakKeyDictionary()


@contextmanager
def focused(flow: Any, focus: int | ListProbe) -> Iterator[None]:
    """Within the block, `mcp:` conditions on ``flow`` judge only element ``focus`` of a
    batch (or the list probe)."""
    _focus[flow] = focus
    try:
        yield
    finally:
        _focus.pop(flow, None)


def _globs(value: Any, where: Where, *, ignore_case: bool = False) -> tuple[Glob, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) and i for i in items):
        where.fail("expected a glob or a non-empty list of globs")
    return tuple(Glob(i, ignore_case=ignore_case) for i in items)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class McpCondition:
    methods: tuple[Glob, ...] = ()
    tools: tuple[Glob, ...] = ()
    arguments: tuple[JsonCondition, ...] = ()
    resources: tuple[Glob, ...] = ()
    listed: bool = False  # list: show

    def holds(self, req: RequestView) -> bool:
        focus = _focus.get(req.flow)
        if isinstance(focus, ListProbe) and self.listed:
            return False
        if req.method != "POST":  # Streamable HTTP sends every message as a POST body
            return False
        outcomes = set()
        for document in req.fields:
            try:
                found = jsonrpc.messages(document)
            except jsonrpc.NotJsonRpc as exc:
                raise EvaluationError(f"mcp: {exc}") from None
            if found is None:
                outcomes.add(False)
                continue
            if isinstance(focus, int):
                found = found[focus:focus + 1]
            outcomes.add(any(self.judge(m, focus) for m in found))
        if len(outcomes) > 1:
            raise EvaluationError(
                "mcp: the request gives different answers depending on which copy of a field "
                "the server reads (duplicate keys or case variants)")
        return outcomes.pop()

    def judge(self, message: jsonrpc.Message, focus: Any = None) -> bool:
        if self.methods and not any(g.matches(message.method) for g in self.methods):
            return False
        if self.tools:
            if message.method != "tools/call":
                return False
            name = message.name
            if not isinstance(name, str):
                raise EvaluationError(f"mcp: the tool name (params.name) is {_kind(name)}, not a string")
            if not any(g.matches(name) for g in self.tools):
                return False
        if self.resources:
            if message.method not in jsonrpc.URI_METHODS:
                return False
            uri = message.uri
            if not isinstance(uri, str):
                raise EvaluationError(f"mcp: the resource (params.uri) is {_kind(uri)}, not a string")
            if not any(g.matches(uri) for g in self.resources):
                return False
        if self.arguments:
            if isinstance(focus, ListProbe):
                return focus.assume
            if message.method not in jsonrpc.NAMED_METHODS:
                return False
            arguments = message.arguments
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, dict):
                raise EvaluationError(f"mcp: params.arguments is {_kind(arguments)}, not an object")
            try:
                return all(cond.holds((arguments,)) for cond in self.arguments)
            except EvaluationError as exc:
                raise EvaluationError(f"mcp arguments: {exc}") from None
        return True


def compile_mcp(spec: Any, where: Where) -> McpCondition:
    if not isinstance(spec, dict) or not spec:
        where.fail(f"expected a mapping with any of {', '.join(MCP_KEYS)}")
    for key in spec:
        if key not in MCP_KEYS:
            (where / key).fail(f"unknown key {key!r}; expected one of {', '.join(MCP_KEYS)}")
    kwargs: dict[str, Any] = {}
    if "method" in spec:
        kwargs["methods"] = _globs(spec["method"], where / "method")
    if "tool" in spec:
        kwargs["tools"] = _globs(spec["tool"], where / "tool")
    if "resource" in spec:
        kwargs["resources"] = _globs(spec["resource"], where / "resource")
    if "arguments" in spec:
        value = spec["arguments"]
        if not isinstance(value, dict) or not value:
            (where / "arguments").fail("expected a mapping of JSONPath -> condition")
        kwargs["arguments"] = tuple(
            compile_field_condition(expression, cond, where / "arguments" / expression)
            for expression, cond in value.items())
    if "list" in spec:
        if spec["list"] not in ("hide", "show"):
            (where / "list").fail("list: expected hide or show")
        kwargs["listed"] = spec["list"] == "show"
    return McpCondition(**kwargs)


def compile_deny_as(value: Any, where: Where, context: Any) -> str:
    if value not in DENY_AS:
        where.fail(f"deny_as: expected one of {', '.join(DENY_AS)}")
    return str(value)


match_key("mcp", type="mapping {method, tool, arguments, resource, list}",
          example='{method: tools/call, tool: "delete_*"}', see="mcp.md#the-mcp-match-key",
          summary="a JSON-RPC (MCP) message in the body has the method, tool name, arguments "
                  "or resource URI; each element of a batch is judged")(compile_mcp)
rule_field("deny_as", type="jsonrpc | tool_result | provider | json",
           summary="The shape of this rule's refusals: JSON-RPC error (default for MCP), a failed "
                   "MCP tool result (isError), the OpenAI/Anthropic error shape (default on their "
                   "hosts) or the gateway's JSON.",
           example="tool_result", see="mcp.md#denials")(compile_deny_as)
