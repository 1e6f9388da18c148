"""Accept only read-only SQL from analysts and other addons.

This is the first of two locks: the statement must parse (with DuckDB's own parser) as
exactly one ``SELECT`` (which includes ``FROM t``, ``WITH``, ``VALUES``, ``DESCRIBE``,
``SHOW`` and ``SUMMARIZE``) or an ``EXPLAIN`` of one. The second lock is where it runs:
:meth:`recordings.store.Store.query` executes it inside a read-only transaction that is
rolled back, so even a function with a side effect cannot change the database.
"""

from __future__ import annotations

import re

import duckdb

_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\s+", re.IGNORECASE)


class ReadOnlyViolation(Exception):
    """The SQL is not a single read-only statement; the message says what was found."""


def read_only_statement(sql: str) -> str:
    """The text of the single read-only statement in ``sql``; raises ReadOnlyViolation."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlyViolation(f"the SQL does not parse: {exc}") from None
    if len(statements) != 1:
        raise ReadOnlyViolation(f"expected exactly one statement, got {len(statements)}")
    (statement,) = statements
    kind = statement.type
    if _first_word(sql) == "pragma":
        # DuckDB 1.5 parses some PRAGMAs (table_info, version, ...) into a SELECT of a
        # pragma_* table function; a PRAGMA is a setting's statement and is refused as such.
        raise ReadOnlyViolation("only read-only queries (SELECT) are allowed, not PRAGMA")
    if kind == duckdb.StatementType.EXPLAIN:
        read_only_statement(_EXPLAIN.sub("", statement.query, count=1))
    elif kind != duckdb.StatementType.SELECT:
        name = getattr(kind, "name", str(kind))
        raise ReadOnlyViolation(f"only read-only queries (SELECT) are allowed, not {name}")
    return statement.query.strip().rstrip(";")


def _first_word(sql: str) -> str:
    """The statement's first keyword, lower-case (comments are not tokens)."""
    tokens = duckdb.tokenize(sql)
    if not tokens:
        return ""
    start = tokens[0][0]
    end = tokens[1][0] if len(tokens) > 1 else len(sql)
    return sql[start:end].split("(", 1)[0].strip().lower()
