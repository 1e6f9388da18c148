"""What the ``sql:`` and ``graphql:`` keys may name: dialects, statement and operation kinds.

Plain data, apart from the engines (addons.querylang.sql, .graphql) so that the rules
can be checked without importing sqlglot or graphql-core: those are imported when the
first rule that uses them is compiled (a tenth of a second of every start otherwise).
"""

from __future__ import annotations

#: Dialects a rule may name -> sqlglot's dialect name ("generic": sqlglot's own).
DIALECTS: dict[str, str | None] = {
    "generic": None,
    "postgres": "postgres",
    "snowflake": "snowflake",
    "databricks": "databricks",
    "bigquery": "bigquery",
    "mysql": "mysql",
    "sqlite": "sqlite",
    "tsql": "tsql",
}

KINDS = (
    "select", "insert", "update", "delete", "merge", "create", "alter", "drop", "truncate",
    "grant", "revoke", "copy", "call", "set", "transaction", "other", "unknown",
)
#: Kinds that change data or the schema (for summaries and the recordings view).
WRITE_KINDS = frozenset({"insert", "update", "delete", "merge", "create", "alter", "drop",
                         "truncate", "grant", "revoke", "copy", "call"})

#: GraphQL operation types ("unknown": what cannot be classified).
OPERATION_KINDS = ("query", "mutation", "subscription", "unknown")
