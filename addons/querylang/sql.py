"""SQL text -> what it does: statement kinds, tables read and written, functions, and
the missing WHERE / LIMIT clauses the rules ask about.

Parsing uses sqlglot in the dialect the upstream speaks, because the dialect decides
what is a comment, a string or an identifier (MySQL's ``#`` comments and unnested
``/* */``, Postgres's nested comments and ``$$`` strings, backquoted BigQuery names):
a parser that reads the text differently from the database is a bypass.

Fail closed: the kind is ``unknown`` when the text does not tokenize or parse, parses
only as a generic command (sqlglot's ``Command`` fallback, e.g. ``EXPLAIN ANALYZE
DELETE ...``, ``VACUUM``), is a statement type not mapped below, holds an executable
comment (MySQL/MariaDB ``/*! ... */`` and ``/*M! ... */``, which the server runs but a
parser skips), a nested block comment or a backslash inside a string in the generic dialect (servers disagree on
nesting and on escapes), is empty, or is longer than :data:`MAX_SQL_CHARS`.

Kinds are collected anywhere in the tree: ``WITH x AS (DELETE ...) SELECT`` is a select
and a delete, ``INSERT ... ON CONFLICT DO UPDATE`` an insert and an update. A SELECT
inside another statement (``INSERT ... SELECT``, ``CREATE TABLE AS SELECT``) reads
tables but does not add the select kind.

Classifications are cached by (dialect, text) in a bounded LRU, so a statement an agent
repeats costs a dictionary lookup. Plain data in, plain data out: no mitmproxy here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from addons.querylang.kinds import DIALECTS, KINDS, WRITE_KINDS  # noqa: F401 - KINDS re-exported

#: Longer texts are not parsed (bounded work per request): kind unknown.
MAX_SQL_CHARS = 256 * 1024
#: Texts up to this length are cached; longer ones are rare and would crowd the cache.
MAX_CACHED_CHARS = 16 * 1024
CACHE_ENTRIES = 4096

# sqlglot logs a warning each time it falls back to Command; that is our "unknown".
logging.getLogger("sqlglot").setLevel(logging.ERROR)

#: Statement node types -> kind. Looked up by exact type, then by isinstance in order.
_STATEMENT_KINDS: tuple[tuple[type[exp.Expression], str], ...] = (
    (exp.Select, "select"),
    (exp.SetOperation, "select"),  # UNION / INTERSECT / EXCEPT
    (exp.Subquery, "select"),
    (exp.Values, "select"),
    (exp.Insert, "insert"),
    (exp.Update, "update"),
    (exp.Delete, "delete"),
    (exp.Merge, "merge"),
    (exp.Create, "create"),
    (exp.Alter, "alter"),
    (exp.Drop, "drop"),
    (exp.TruncateTable, "truncate"),
    (exp.Grant, "grant"),
    (exp.Revoke, "revoke"),
    (exp.Copy, "copy"),
    (exp.Execute, "call"),  # T-SQL EXEC
    (exp.Set, "set"),
    (exp.Transaction, "transaction"),
    (exp.Commit, "transaction"),
    (exp.Rollback, "transaction"),
    # Read the catalog or switch context; no data changes. PRAGMA can change settings
    # in SQLite, which is why "other" is its own kind the packs hold rather than allow.
    (exp.Show, "other"),
    (exp.Describe, "other"),
    (exp.Use, "other"),
    (exp.Pragma, "other"),
)
#: Node types whose presence anywhere in a statement adds their kind.
_NESTED_KINDS: tuple[tuple[type[exp.Expression], str], ...] = tuple(
    (t, k) for t, k in _STATEMENT_KINDS
    if k in WRITE_KINDS and t is not exp.Execute
)
_WRITE_TYPES = tuple(t for t, _ in _NESTED_KINDS)


@dataclass(frozen=True)
class Classification:
    """What one SQL text does. Immutable: classifications are shared through the cache."""

    kinds: frozenset[str]
    #: every table referenced, read or written (schema-qualified as written, lower case)
    tables: tuple[str, ...] = ()
    #: tables read (referenced other than as a write target)
    tables_read: tuple[str, ...] = ()
    #: write targets: INSERT/UPDATE/DELETE/MERGE/CREATE/ALTER/DROP/TRUNCATE/COPY
    tables_written: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    statements: int = 0
    #: kinds (update, delete) that appear without a WHERE clause
    where_missing: tuple[str, ...] = ()
    #: a top-level SELECT without LIMIT / FETCH / TOP
    limit_missing: bool = False
    #: why the kind is unknown (None when it is not)
    unknown_reason: str | None = None

    @property
    def multi_statement(self) -> bool:
        return self.statements > 1

    def summary(self) -> str:
        """One line for reviewers, `explain` and the queue:
        ``sql: delete on public.customers, no WHERE; tables read: —; written: public.customers``."""
        kinds = [k for k in KINDS if k in self.kinds]
        head = ", ".join(kinds) or "no statement"
        targets = self.tables_written if set(kinds) & WRITE_KINDS else self.tables_read
        if targets:
            head += " on " + ", ".join(targets)
        if self.unknown_reason:
            head += f" ({self.unknown_reason})"
        if self.where_missing:
            head += ", no WHERE"
        if self.limit_missing and not self.where_missing:
            head += ", no LIMIT"
        if self.multi_statement:
            head += f", {self.statements} statements"
        read = ", ".join(self.tables_read) or "—"
        written = ", ".join(self.tables_written) or "—"
        return f"sql: {head}; tables read: {read}; written: {written}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for events and the recordings."""
        return {
            "kinds": [k for k in KINDS if k in self.kinds],
            "tables_read": list(self.tables_read),
            "tables_written": list(self.tables_written),
            "functions": list(self.functions),
            "statements": self.statements,
            "where_missing": list(self.where_missing),
            "limit_missing": self.limit_missing,
            "unknown_reason": self.unknown_reason,
            "summary": self.summary(),
        }


def unknown(reason: str, statements: int = 0) -> Classification:
    return Classification(frozenset({"unknown"}), statements=statements, unknown_reason=reason)


def classify(text: str, dialect: str = "generic") -> Classification:
    """Classify a SQL text (one or more statements). Never raises for any text."""
    if len(text) > MAX_CACHED_CHARS:
        return _classify(text, dialect)
    return _cached(dialect, text)


@lru_cache(maxsize=CACHE_ENTRIES)
def _cached(dialect: str, text: str) -> Classification:
    return _classify(text, dialect)


def cache_clear() -> None:
    _cached.cache_clear()


def _classify(text: str, dialect: str) -> Classification:
    if len(text) > MAX_SQL_CHARS:
        return unknown(f"longer than {MAX_SQL_CHARS} characters")
    sqlglot_dialect = sqlglot.Dialect.get_or_raise(DIALECTS[dialect])
    try:
        tokens = sqlglot_dialect.tokenize(text)
    except (SqlglotError, RecursionError, ValueError) as exc:
        return unknown(f"does not tokenize: {_short(exc)}")
    for token in tokens:
        if dialect == "generic" and "\\" in token.text:
            # MySQL, Snowflake, BigQuery and Spark read \' in a string as a quote, Postgres,
            # SQLite and SQL Server as a backslash, so where the string ends (and whether
            # "'x\'' ; DROP TABLE t; -- '" holds a DROP) depends on the server.
            return unknown("backslash in a string or name (servers disagree on escapes)")
        for comment in token.comments:
            body = comment.lstrip()
            if body.startswith("!") or body.startswith("M!"):
                return unknown("executable comment")
            if dialect == "generic" and "/*" in comment:
                return unknown("nested comment (servers disagree on nesting)")
    try:
        parsed = sqlglot_dialect.parser().parse(tokens, text)
    except (SqlglotError, RecursionError, ValueError) as exc:
        return unknown(f"does not parse: {_short(exc)}")
    except Exception as exc:  # noqa: BLE001 - a parser bug must classify as unknown, not crash
        return unknown(f"parser failed: {type(exc).__name__}")
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        return unknown("no statement")
    try:
        return _describe(statements)
    except RecursionError:
        return unknown("nested too deeply", len(statements))


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def _describe(statements: list[exp.Expression]) -> Classification:
    kinds: set[str] = set()
    reasons: list[str] = []
    written: dict[str, None] = {}
    read: dict[str, None] = {}
    functions: dict[str, None] = {}
    where_missing: dict[str, None] = {}
    limit_missing = False
    for statement in statements:
        kind, reason = _statement_kind(statement)
        kinds.add(kind)
        if reason:
            reasons.append(reason)
        if kind == "select" and not _has_limit(statement):
            limit_missing = True
        if kind == "call":
            name = _call_name(statement)
            if name:
                functions[name] = None
        ctes: set[str] = set()
        tables: list[exp.Table] = []
        # A procedure name is not a table read.
        targets: set[int] = {id(statement.this)} if isinstance(statement, exp.Execute) else set()
        for node in statement.walk():
            role = _role(type(node))
            if role is None:
                continue
            if role == "table":
                tables.append(node)
            elif role == "cte":
                ctes.add(node.alias_or_name.lower())
            elif role == "write":
                nested = _nested_kind(node)
                kinds.add(nested)
                for table in _write_targets(node):
                    targets.add(id(table))
                    name = _table_name(table)
                    if name:
                        written[name] = None
                # MERGE's WHEN MATCHED THEN UPDATE has no WHERE: its rows are the ON's.
                if (nested in ("update", "delete") and node.args.get("where") is None
                        and node.find_ancestor(exp.Merge) is None):
                    where_missing[nested] = None
            elif role == "conflict":
                if "UPDATE" in str(node.args.get("action") or "").upper():
                    kinds.add("update")  # an upsert: ON CONFLICT DO UPDATE / ON DUPLICATE KEY UPDATE
            elif role == "command":
                if not (node is statement and kind == "call"):
                    kinds.add("unknown")
                    reasons.append(f"generic command {str(node.this).upper()}")
            elif role == "anonymous":
                functions[str(node.name).lower()] = None
            elif role == "function":
                functions[node.sql_name().lower()] = None
        if isinstance(statement, exp.Use):
            tables = []  # USE names a database, schema or warehouse, not a table read
        for table in tables:
            name = _table_name(table)
            if not name or id(table) in targets or (name in ctes and not table.db):
                continue
            read[name] = None
    if "unknown" in kinds and not reasons:
        reasons.append("unclassified statement")
    return Classification(
        kinds=frozenset(kinds),
        tables=tuple(sorted({*read, *written})),
        tables_read=tuple(sorted(read)),
        tables_written=tuple(sorted(written)),
        functions=tuple(functions),
        statements=len(statements),
        where_missing=tuple(where_missing),
        limit_missing=limit_missing,
        unknown_reason="; ".join(dict.fromkeys(reasons)) if "unknown" in kinds else None,
    )


#: node type -> its role in _describe (None: nothing to collect). Filled on first sight
#: of each type: one isinstance chain per type instead of per node (half the cold cost).
_ROLES: dict[type, str | None] = {}


def _role(node_type: type) -> str | None:
    try:
        return _ROLES[node_type]
    except KeyError:
        pass
    role: str | None = None
    if issubclass(node_type, exp.Table):
        role = "table"
    elif issubclass(node_type, exp.CTE):
        role = "cte"
    elif issubclass(node_type, _WRITE_TYPES):
        role = "write"
    elif issubclass(node_type, exp.OnConflict):
        role = "conflict"
    elif issubclass(node_type, exp.Command):
        role = "command"
    elif issubclass(node_type, exp.Anonymous):
        role = "anonymous"
    elif issubclass(node_type, exp.Func):
        role = "function"
    _ROLES[node_type] = role
    return role


_KIND_BY_TYPE: dict[type, str] = {}


def _statement_kind(statement: exp.Expression) -> tuple[str, str | None]:
    kind = _KIND_BY_TYPE.get(type(statement))
    if kind is not None:
        return kind, None
    if isinstance(statement, exp.Command):
        keyword = str(statement.this).upper()
        if keyword == "CALL":  # a stored procedure: what it runs is not in the text
            return "call", None
        return "unknown", f"generic command {keyword}"
    for node_type, found in _STATEMENT_KINDS:
        if isinstance(statement, node_type):
            _KIND_BY_TYPE[type(statement)] = found
            return found, None
    return "unknown", f"unclassified statement {type(statement).__name__}"


def _nested_kind(node: exp.Expression) -> str:
    for node_type, kind in _NESTED_KINDS:
        if isinstance(node, node_type):
            return kind
    return "unknown"


def _has_limit(statement: exp.Expression) -> bool:
    query = statement.this if isinstance(statement, exp.Subquery) else statement
    return any(query.args.get(k) is not None for k in ("limit", "fetch", "top"))


def _write_targets(node: exp.Expression) -> list[exp.Table]:
    """The tables a writing statement changes (not the ones it only reads)."""
    candidates: list[Any] = []
    if isinstance(node, exp.TruncateTable):
        candidates = list(node.expressions)
    elif isinstance(node, exp.Delete | exp.Drop) and node.args.get("tables"):
        # MySQL: DELETE t1, t2 FROM ...; sqlglot 30 keeps DROP's objects in "tables".
        candidates = list(node.args["tables"])
    else:
        candidates = [node.this]
    out = []
    for candidate in candidates:
        if isinstance(candidate, exp.Schema):  # INSERT INTO t (a, b) / CREATE TABLE t (...)
            candidate = candidate.this
        if isinstance(candidate, exp.Table):
            out.append(candidate)
    return out


def _table_name(table: exp.Table) -> str:
    parts = [table.catalog, table.db, table.name]
    return ".".join(p for p in parts if p).lower()


def _call_name(statement: exp.Expression) -> str:
    if isinstance(statement, exp.Execute):
        return str(statement.this.name if isinstance(statement.this, exp.Expression) else statement.this).lower()
    rest = str(statement.expression.name if isinstance(statement.expression, exp.Expression) else "")
    return rest.strip().split("(", 1)[0].strip().lower()


def pretty(text: str, dialect: str = "generic") -> str | None:
    """The SQL laid out for a reviewer (one clause per line), or None when it does not
    parse or is ``unknown``: an executable comment would print as a harmless comment
    (``/*!50000DROP*/ TABLE t`` as ``SELECT * FROM t``), so reviewers see such text raw."""
    if len(text) > MAX_CACHED_CHARS or "unknown" in classify(text, dialect).kinds:
        return None
    try:
        return ";\n".join(sqlglot.transpile(text, read=DIALECTS[dialect], write=DIALECTS[dialect],
                                             pretty=True))
    except (SqlglotError, RecursionError, ValueError):
        return None
