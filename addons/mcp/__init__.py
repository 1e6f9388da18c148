"""MCP (Model Context Protocol) over Streamable HTTP: what the gateway understands of it.

* ``jsonrpc``: JSON-RPC 2.0 messages (single or batch) read from a request body, and the
  error / tool-result messages the gateway answers with (engine, no mitmproxy).
* ``rules``: the ``mcp:`` match key (method, tool, arguments, resource) and the
  ``deny_as`` rule key (engine).
* ``toolslist``: removing tools from a ``tools/list`` result, JSON or SSE (engine).
* ``addon``: adapts flows: header/body agreement, per-element verdicts of batches, the
  denial shape of MCP flows, ``tools/list`` filtering.

See docs/mcp.md.
"""
