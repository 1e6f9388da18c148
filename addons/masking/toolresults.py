"""Masks inside MCP tool results: JSON that arrives as text inside JSON.

An MCP server answers ``tools/call`` with a JSON-RPC result whose ``content`` is a list of
items; a tool that returns a record sends it as ``{"type": "text", "text": "<JSON>"}``
(and the official SDK copies it into ``structuredContent`` as well). To a mask the text
is one opaque string, so ``$..ssn`` would pass the SSN in it: the agent's model reads
the JSON all the same. :func:`with_tool_results` wraps a document editor so that each
such text that is itself a JSON object or array is parsed, masked as a document of its
own (paths are evaluated from the tool's JSON as the root, ``$..`` reaches everything)
and re-serialised; the rest of the envelope, ``structuredContent`` included, is masked
as the document it is (``$..ssn``, or ``$.result.structuredContent.ssn``). The JSON
Schemas in a ``tools/list`` result are left alone: they name fields, they hold no values.

Plain data (no mitmproxy): used for whole JSON bodies and for each event of a stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from addons.masking.bodies import JsonEdit, _has_exact_float, dump_json, parse_json


def with_tool_results(edit_json: JsonEdit) -> JsonEdit:
    """``edit_json`` that also reaches into the JSON texts of JSON-RPC tool results."""

    def edit(document: Any) -> tuple[Any, bool]:
        schemas = _detach_schemas(document)
        try:
            return _edit(document)
        finally:
            for tool, name, schema in schemas:
                tool[name] = schema

    def _edit(document: Any) -> tuple[Any, bool]:
        changed = False
        for item in _json_text_items(document):
            text = item["text"]
            try:
                inner = parse_json(text)
            except ValueError:
                continue  # looked like JSON, is not: it stays text (detectors still see it)
            new, edited = edit_json(inner)
            if edited:
                item["text"] = _dump_like(new, text)
                changed = True
        document, edited = edit_json(document)
        return document, changed or edited

    return edit


def _messages(document: Any) -> Iterator[dict[str, Any]]:
    for message in document if isinstance(document, list) else [document]:
        if isinstance(message, dict) and "jsonrpc" in message and isinstance(message.get("result"), dict):
            yield message


def _detach_schemas(document: Any) -> list[tuple[dict[str, Any], str, Any]]:
    """Take the JSON Schemas out of ``tools/list`` results while the masks run.

    ``inputSchema`` and ``outputSchema`` describe a tool's fields, they hold no values:
    ``$..ssn`` would replace the schema of the ``ssn`` property and the SDK would reject
    the whole list (and the tool)."""
    taken = []
    for message in _messages(document):
        tools = message["result"].get("tools")
        for tool in tools if isinstance(tools, list) else []:
            for name in ("inputSchema", "outputSchema"):
                if isinstance(tool, dict) and name in tool:
                    taken.append((tool, name, tool.pop(name)))
    return taken


def _json_text_items(document: Any) -> Iterator[dict[str, Any]]:
    """The ``content`` items of JSON-RPC results (a batch too) whose text is JSON-shaped."""
    for message in _messages(document):
        content = message["result"].get("content")
        if not isinstance(content, list):
            continue
        for item in content:
            if isinstance(item, dict) and isinstance(item.get("text"), str) \
                    and item["text"].lstrip()[:1] in ("{", "["):
                yield item


def _dump_like(document: Any, original: str) -> str:
    """Re-serialise in the original's layout: indented if it was (FastMCP indents by 2)."""
    if "\n" in original and not _has_exact_float(document):  # an exact decimal needs dump_json
        try:
            return json.dumps(document, ensure_ascii=False, indent=2)
        except (TypeError, ValueError, RecursionError):
            pass
    return dump_json(document).decode("utf-8")
