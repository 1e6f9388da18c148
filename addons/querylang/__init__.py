"""Query languages inside HTTP bodies: SQL statements and GraphQL operations, classified.

An agent that reaches a database over HTTP (Snowflake's SQL API, Databricks SQL
statements, an MCP ``execute_sql`` tool, PostgREST, a GraphQL API) carries the dangerous
part of the request as text in a JSON field. A regex on that text is not a control
(quoted identifiers, comments, executable comments, a list instead of a string), so the
text is parsed with a real parser and reduced to a classification the rules judge:
statement kinds, tables read and written, missing WHERE/LIMIT, functions called
(:mod:`addons.querylang.sql`), or operation type, name and fields
(:mod:`addons.querylang.graphql`). Anything the parser cannot classify is ``unknown``,
which the shipped rule packs hold or block: fail closed.

The engine modules take plain data and return plain data (no mitmproxy);
:mod:`addons.querylang.rules` turns them into ``sql:`` and ``graphql:`` match keys.
"""
