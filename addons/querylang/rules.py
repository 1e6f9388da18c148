"""The ``sql:`` and ``graphql:`` match keys: query-language conditions on request fields.

Both read the request's fields the way every other field condition does
(addons.policy.fields: JSON, form and multipart bodies and the query string, keys case-folded,
each ambiguous reading judged separately and required to agree), find the query text,
classify it (addons.querylang.sql / .graphql) and judge the classification::

    sql:
      field: "$.statement"        # or a list; default: $.statement, $.query, $.sql,
                                  # $.params.arguments.sql, $.params.arguments.query
      dialect: snowflake          # default generic
      statement: [delete, drop]   # any of these kinds present; {only: [select]}: nothing else
      where: missing              # an UPDATE/DELETE without WHERE
      limit: missing              # a SELECT without LIMIT
      tables: ["public.*"]        # any table referenced (read or written)
      writes_tables: ["prod.*"]   # any table written
      multi_statement: true
      functions: ["pg_sleep", "lo_*"]

    graphql:
      operation: mutation         # or a list; unknown: what cannot be classified
      name: "Delete*"
      fields: [deleteRepository, "repository.collaborators"]
      variables: {"$.input.amount": {gt: 100}}
      persisted: allow            # hash-only (persisted) queries satisfy this condition
      batch: all                  # every batched operation must match (default: any)

Every listed condition must hold. A request with no query text at the field is not
matched; a value there that is not a string (``{"statement": ["DROP TABLE t"]}``) is an
EvaluationError: the request is refused, never judged as "no SQL". Each flow's
classification is kept in ``state.classifications`` and emitted once as a
``classified`` event, so the recordings can be queried by statement kind.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from addons.core.rulefile import Where
from addons.core.secretforms import REDACTED
from addons.policy.conditions import (
    EvaluationError,
    Glob,
    JsonCondition,
    RequestView,
    compile_field_condition,
    compile_jsonpath,
    fold_field_names,
    match_key,
)
from addons.querylang.kinds import DIALECTS, KINDS, OPERATION_KINDS

if TYPE_CHECKING:
    from addons.querylang import graphql, sql

DEFAULT_SQL_FIELDS = ("$.statement", "$.query", "$.sql", "$.params.arguments.sql",
                      "$.params.arguments.query")
SQL_KEYS = ("field", "dialect", "statement", "where", "limit", "tables", "writes_tables",
            "multi_statement", "functions")
GRAPHQL_KEYS = ("operation", "name", "fields", "variables", "persisted", "batch")


def _globs(value: Any, where: Where) -> tuple[Glob, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) and i for i in items):
        where.fail("expected a glob or a non-empty list of globs")
    return tuple(Glob(i, ignore_case=True) for i in items)


def _choices(value: Any, allowed: tuple[str, ...], where: Where) -> frozenset[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        where.fail("must not be an empty list")
    for item in items:
        if item not in allowed:
            where.fail(f"unknown value {item!r}; expected one of {', '.join(allowed)}")
    return frozenset(items)


def _check_keys(spec: Any, keys: tuple[str, ...], where: Where) -> dict[str, Any]:
    if not isinstance(spec, dict) or not spec:
        where.fail(f"expected a mapping with any of {', '.join(keys)}")
    for key in spec:
        if key not in keys:
            (where / key).fail(f"unknown key {key!r}; expected one of {', '.join(keys)}")
    return spec


def _engine(name: str, where: Where) -> ModuleType:
    """addons.querylang.sql or .graphql, imported by the first rule that uses it: sqlglot
    and graphql-core cost a tenth of a second of every start, and most rules use neither.
    A parser that cannot be imported is a problem of the rule that needs it."""
    try:
        return importlib.import_module(f"addons.querylang.{name}")
    except ImportError as exc:
        where.fail(f"{name}: the {name} parser cannot be imported ({exc})")


def _remember(req: RequestView, language: str, key: tuple[Any, ...], detail: Any) -> None:
    """Keep the classification on the flow and emit it once (events, recordings)."""
    state = req.state
    if state is None:
        return
    seen = state.classifications
    if key in seen:
        return
    seen[key] = detail
    state.emit("classified", language=language, classification=detail)


# --- sql -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlCondition:
    fields: tuple[tuple[str, Any], ...]
    dialect: str
    any_kinds: frozenset[str] = frozenset()
    only_kinds: frozenset[str] = frozenset()
    where_missing: bool = False
    limit_missing: bool = False
    tables: tuple[Glob, ...] = ()
    writes_tables: tuple[Glob, ...] = ()
    multi_statement: bool | None = None
    functions: tuple[Glob, ...] = ()
    #: addons.querylang.sql (see _engine)
    engine: Any = field(default=None, compare=False, repr=False)

    def holds(self, req: RequestView) -> bool:
        outcomes = set()
        for document in req.fields:
            texts = self._texts(document)
            if not texts:
                outcomes.add(False)
                continue
            found = [self.engine.classify(t, self.dialect) for t in texts]
            for text, c in zip(texts, found, strict=True):
                _remember(req, "sql", ("sql", self.dialect, text), c.as_dict())
            outcomes.add(self._judge(found))
        if len(outcomes) > 1:
            raise EvaluationError(
                "sql: the request gives different answers depending on which copy of the "
                "SQL field the upstream reads (duplicate keys, case variants, or several places)")
        return outcomes.pop()

    def _texts(self, document: Any) -> list[str]:
        texts: list[str] = []
        for expression, path in self.fields:
            try:
                values = [m.value for m in path.find(document)]
            except RecursionError:
                raise EvaluationError(f"sql: JSONPath {expression} recursed too deeply") from None
            for value in values:
                if not isinstance(value, str):
                    raise EvaluationError(
                        f"sql: {expression} must be a string of SQL, got {_kind(value)}")
                texts.append(value)
        return texts

    def _judge(self, found: list[sql.Classification]) -> bool:
        kinds = frozenset().union(*(c.kinds for c in found))
        if self.any_kinds and not kinds & self.any_kinds:
            return False
        if self.only_kinds and not kinds <= self.only_kinds:
            return False
        if self.where_missing and not any(c.where_missing for c in found):
            return False
        if self.limit_missing and not any(c.limit_missing for c in found):
            return False
        if self.multi_statement is not None:
            multi = sum(c.statements for c in found) > 1
            if multi != self.multi_statement:
                return False
        if self.tables and not _any_glob(self.tables, [t for c in found for t in c.tables]):
            return False
        if self.writes_tables and not _any_glob(
                self.writes_tables, [t for c in found for t in c.tables_written]):
            return False
        return not self.functions or _any_glob(self.functions, [f for c in found for f in c.functions])


def _any_glob(globs: tuple[Glob, ...], names: list[str]) -> bool:
    return any(g.matches(n) for g in globs for n in names)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def compile_sql(spec: Any, where: Where) -> SqlCondition:
    spec = _check_keys(spec, SQL_KEYS, where)
    fields = spec.get("field", list(DEFAULT_SQL_FIELDS))
    if isinstance(fields, str):
        fields = [fields]
    if not isinstance(fields, list) or not fields:
        (where / "field").fail("expected a JSONPath or a list of JSONPaths")
    paths = tuple((f, fold_field_names(compile_jsonpath(f, where / "field"))) for f in fields)
    dialect = spec.get("dialect", "generic")
    if dialect not in DIALECTS:
        (where / "dialect").fail(f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    kwargs: dict[str, Any] = {}
    if "statement" in spec:
        value = spec["statement"]
        if isinstance(value, dict):
            if set(value) != {"only"}:
                (where / "statement").fail("expected a kind, a list of kinds, or {only: [kinds]}")
            kwargs["only_kinds"] = _choices(value["only"], KINDS, where / "statement" / "only")
        else:
            kwargs["any_kinds"] = _choices(value, KINDS, where / "statement")
    for key in ("where", "limit"):
        if key in spec:
            if spec[key] != "missing":
                (where / key).fail(f"{key}: only 'missing' is supported")
            kwargs[f"{key}_missing"] = True
    if "multi_statement" in spec:
        if not isinstance(spec["multi_statement"], bool):
            (where / "multi_statement").fail("expected true or false")
        kwargs["multi_statement"] = spec["multi_statement"]
    for key in ("tables", "writes_tables", "functions"):
        if key in spec:
            kwargs[key] = _globs(spec[key], where / key)
    return SqlCondition(paths, dialect, **kwargs, engine=_engine("sql", where))


# --- graphql -------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphqlCondition:
    operations: frozenset[str] = frozenset()
    names: tuple[Glob, ...] = ()
    fields: tuple[Glob, ...] = ()
    variables: tuple[JsonCondition, ...] = ()
    persisted_allowed: bool = False
    every: bool = False
    #: addons.querylang.graphql (see _engine)
    engine: Any = field(default=None, compare=False, repr=False)

    def holds(self, req: RequestView) -> bool:
        outcomes = set()
        for document in req.fields:
            try:
                ops = self.engine.operations(document)
            except self.engine.NotGraphQL as exc:
                raise EvaluationError(f"graphql: {exc}") from None
            if ops is None:
                outcomes.add(False)
                continue
            for i, op in enumerate(ops):
                _remember(req, "graphql", ("graphql", i, op.kind, op.name, op.root_fields), op.as_dict())
            results = [self._judge(op) for op in ops]
            outcomes.add(all(results) if self.every else any(results))
        if len(outcomes) > 1:
            raise EvaluationError(
                "graphql: the request gives different answers depending on which copy of the "
                "query the upstream reads (duplicate keys, case variants, or several places)")
        return outcomes.pop()

    def _judge(self, op: graphql.Operation) -> bool:
        if op.persisted and self.persisted_allowed:
            # A stored document the gateway cannot see: the rule accepts it as such,
            # judging only the name the request gives.
            return not self.names or any(g.matches(op.name or "") for g in self.names)
        if self.operations and op.kind not in self.operations:
            return False
        if self.names and not any(g.matches(op.name or "") for g in self.names):
            return False
        if self.fields and not _any_glob(self.fields, list(op.paths)):
            return False
        if self.variables:
            document = _fold_keys(op.variables)
            try:
                return all(cond.holds((document,)) for cond in self.variables)
            except EvaluationError as exc:
                raise EvaluationError(f"graphql variables: {exc}") from None
        return True


def _fold_keys(value: Any) -> Any:
    """Variables case-folded like every other request field (so the JSONPaths, which are
    folded, find them); two keys that fold together are ambiguous."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            folded = str(key).casefold()
            if folded in out:
                raise EvaluationError(f"graphql variables: keys differing only in case ({key!r})")
            out[folded] = _fold_keys(item)
        return out
    if isinstance(value, list):
        return [_fold_keys(v) for v in value]
    return value


def compile_graphql(spec: Any, where: Where) -> GraphqlCondition:
    spec = _check_keys(spec, GRAPHQL_KEYS, where)
    kwargs: dict[str, Any] = {}
    if "operation" in spec:
        kwargs["operations"] = _choices(spec["operation"], OPERATION_KINDS, where / "operation")
    if "name" in spec:
        kwargs["names"] = tuple(Glob(g.pattern) for g in _globs(spec["name"], where / "name"))
    if "fields" in spec:
        kwargs["fields"] = tuple(Glob(g.pattern) for g in _globs(spec["fields"], where / "fields"))
    if "variables" in spec:
        v = spec["variables"]
        if not isinstance(v, dict) or not v:
            (where / "variables").fail("expected a mapping of JSONPath -> condition")
        kwargs["variables"] = tuple(
            compile_field_condition(expression, cond, where / "variables" / expression)
            for expression, cond in v.items())
    if "persisted" in spec:
        if spec["persisted"] != "allow":
            (where / "persisted").fail("persisted: only 'allow' is supported")
        kwargs["persisted_allowed"] = True
    if "batch" in spec:
        if spec["batch"] not in ("any", "all"):
            (where / "batch").fail("batch: expected any or all")
        kwargs["every"] = spec["batch"] == "all"
    return GraphqlCondition(**kwargs, engine=_engine("graphql", where))


match_key("sql", type="mapping {field, dialect, statement, where, limit, tables, writes_tables, ...}",
          example="{statement: [delete, drop], where: missing}", see="rules.md#sql",
          summary="the SQL in a request field is classified and its statement kinds, tables, missing WHERE/LIMIT match")(compile_sql)
match_key("graphql", type="mapping {operation, name, fields, variables, persisted, batch}",
          example="{operation: mutation, fields: [deleteRepository]}", see="rules.md#graphql",
          summary="the GraphQL operation in the body is parsed and its type, name, fields or variables match")(compile_graphql)


def reviewer_view(classifications: dict[Any, Any], secrets: Any = ()) -> list[dict[str, Any]]:
    """What a reviewer is shown of each query the rules classified: the one-line summary
    (first on the review page and in the queue) and, for SQL, the text laid out. Unknown
    SQL gets no layout (addons.querylang.sql.pretty): the reviewer reads it raw in the body.
    Values the gateway injected are redacted, as in the shown body."""
    out = []
    for key, detail in classifications.items():
        # An sql key is here only once a rule classified SQL, so the engine is imported.
        text = importlib.import_module("addons.querylang.sql").pretty(key[2], key[1]) if key[0] == "sql" else None
        for secret in secrets:
            if text:
                text = text.replace(secret, REDACTED)
        out.append({"language": key[0], "summary": detail["summary"], "pretty": text})
    return out
