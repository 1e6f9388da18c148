"""GraphQL request -> the operations it runs: type, name, root fields and field paths.

GraphQL APIs (GitHub, Shopify, Hasura) carry every write as a ``mutation`` in one
``query`` string posted to one path, so method and path say nothing. The document is
parsed with graphql-core and the operation the server will run is selected the way the
GraphQL spec says (by ``operationName``, or the only one). Fields are reported by name,
never alias, with fragments (named and inline) expanded, so ``mutation { ...F }`` with
``fragment F on Mutation { deleteRepository }`` is a ``deleteRepository`` mutation.

Fail closed, kind ``unknown``: a document that does not parse or exceeds the token or
field limits, several operations and no ``operationName``, an ``operationName`` that
names no operation, an unknown fragment, a persisted-query hash without a document (the
server runs a stored document the gateway cannot see; a rule may accept them with
``persisted: allow``).

Plain data in, plain data out: no mitmproxy here. Parses are cached by document text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from graphql import GraphQLError, parse
from graphql.language import ast

from addons.querylang.kinds import OPERATION_KINDS  # noqa: F401 - re-exported

#: Bounded work per document: more tokens, or more expanded fields, is "unknown".
MAX_TOKENS = 20_000
MAX_FIELDS = 5_000
MAX_DOCUMENT_CHARS = 256 * 1024


class NotGraphQL(Exception):
    """The value in a GraphQL position has the wrong type (e.g. a list as the query)."""


@dataclass(frozen=True)
class Operation:
    """One operation of a request (a batched request has several)."""

    kind: str
    name: str | None = None
    root_fields: tuple[str, ...] = ()
    #: every field as a dotted path of names from the root: repository.issues.nodes
    paths: tuple[str, ...] = ()
    variables: Any = None
    #: a persisted-query hash was sent without a document
    persisted: bool = False
    unknown_reason: str | None = None

    def summary(self) -> str:
        name = self.name or "(anonymous)"
        if self.unknown_reason:
            return f"graphql: unknown {name} ({self.unknown_reason})"
        return f"graphql: {self.kind} {name}; fields: {', '.join(self.root_fields) or '—'}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "root_fields": list(self.root_fields),
                "persisted": self.persisted, "unknown_reason": self.unknown_reason,
                "summary": self.summary()}


def operations(body: Any) -> list[Operation] | None:
    """The operations of a request body/field document: a mapping (one operation) or a
    list of them (batched). None when there is no GraphQL request in it (no ``query``
    and no persisted-query hash). Raises NotGraphQL for values of the wrong type."""
    if isinstance(body, list):
        if not body:
            return None
        ops = [operation(item) for item in body]
        if all(op is None for op in ops):
            return None
        return [op or Operation("unknown", unknown_reason="batch entry without a query") for op in ops]
    op = operation(body)
    return None if op is None else [op]


def operation(request: Any) -> Operation | None:
    """One GraphQL request ``{query, operationName, variables, extensions}``."""
    if not isinstance(request, dict):
        raise NotGraphQL(f"a GraphQL request must be an object, got {type(request).__name__}")
    # Case-insensitive keys: the gateway reads fields case-folded (addons.policy.fields), and
    # GET requests carry variables and extensions as JSON text in the query string.
    request = {str(k).casefold(): v for k, v in request.items()}
    query = request.get("query")
    name = request.get("operationname")
    variables = _json_text(request.get("variables"), "variables")
    for label, value, types in (("query", query, str), ("operationName", name, str),
                                ("variables", variables, dict)):
        if value is not None and not isinstance(value, types):
            raise NotGraphQL(f"{label} must be {types.__name__}, got {type(value).__name__}")
    persisted = _persisted_hash(_json_text(request.get("extensions"), "extensions"))
    if query is None:
        if persisted:
            return Operation("unknown", name, variables=variables or {}, persisted=True,
                             unknown_reason="persisted-query hash without the document")
        return None
    kind, op_name, roots, paths, reason = analyse(query, name)
    return Operation(kind, op_name, roots, paths, variables or {}, False, reason)


def _json_text(value: Any, label: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.strip() else None
    except ValueError:
        raise NotGraphQL(f"{label} is not JSON") from None


def _persisted_hash(extensions: Any) -> bool:
    if not isinstance(extensions, dict):
        return False
    folded = {str(k).casefold(): v for k, v in extensions.items()}
    persisted = folded.get("persistedquery")
    return isinstance(persisted, dict) and any(str(k).casefold() == "sha256hash" for k in persisted)


Analysis = tuple[str, str | None, tuple[str, ...], tuple[str, ...], str | None]
#: Documents up to this length are cached (bounded memory: 2,048 x 16 KiB at most).
MAX_CACHED_CHARS = 16 * 1024


def analyse(document: str, operation_name: str | None = None) -> Analysis:
    """(kind, name, root fields, paths, unknown reason) of the operation the server runs."""
    if len(document) > MAX_CACHED_CHARS:
        return _analyse(document, operation_name)
    return _cached(document, operation_name)


@lru_cache(maxsize=2048)
def _cached(document: str, operation_name: str | None) -> Analysis:
    return _analyse(document, operation_name)


def _analyse(document: str, operation_name: str | None) -> Analysis:
    if len(document) > MAX_DOCUMENT_CHARS:
        return "unknown", operation_name, (), (), f"longer than {MAX_DOCUMENT_CHARS} characters"
    try:
        doc = parse(document, no_location=True, max_tokens=MAX_TOKENS)
    except (GraphQLError, RecursionError) as exc:
        return "unknown", operation_name, (), (), f"does not parse: {str(exc).splitlines()[0][:120]}"
    ops = [d for d in doc.definitions if isinstance(d, ast.OperationDefinitionNode)]
    fragments = {d.name.value: d for d in doc.definitions if isinstance(d, ast.FragmentDefinitionNode)}
    if operation_name is not None:
        chosen = [o for o in ops if o.name is not None and o.name.value == operation_name]
        if len(chosen) != 1:
            return "unknown", operation_name, (), (), "operationName names no single operation"
    elif len(ops) != 1:
        return "unknown", None, (), (), (
            "several operations and no operationName" if ops else "no operation")
    else:
        chosen = ops
    op = chosen[0]
    try:
        roots, paths = _fields(op.selection_set, fragments)
    except _TooMany:
        return "unknown", _name(op), (), (), f"more than {MAX_FIELDS} fields"
    except _BadFragment as exc:
        return "unknown", _name(op), (), (), str(exc)
    return op.operation.value, _name(op), roots, paths, None


def _name(op: ast.OperationDefinitionNode) -> str | None:
    return op.name.value if op.name else None


class _TooMany(Exception):
    pass


class _BadFragment(Exception):
    pass


def _fields(selection_set: ast.SelectionSetNode, fragments: dict[str, ast.FragmentDefinitionNode]
            ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    roots: dict[str, None] = {}
    paths: dict[str, None] = {}
    budget = [MAX_FIELDS]

    def walk(selections: ast.SelectionSetNode | None, prefix: str, active: frozenset[str]) -> None:
        if selections is None:
            return
        for sel in selections.selections:
            budget[0] -= 1
            if budget[0] < 0:
                raise _TooMany
            if isinstance(sel, ast.FieldNode):
                path = f"{prefix}.{sel.name.value}" if prefix else sel.name.value
                if not prefix:
                    roots[sel.name.value] = None
                paths[path] = None
                walk(sel.selection_set, path, active)
            elif isinstance(sel, ast.InlineFragmentNode):
                walk(sel.selection_set, prefix, active)
            elif isinstance(sel, ast.FragmentSpreadNode):
                name = sel.name.value
                if name not in fragments:
                    raise _BadFragment(f"unknown fragment {name}")
                if name in active:  # a cycle: invalid GraphQL, the server refuses it
                    raise _BadFragment(f"fragment {name} spreads itself")
                walk(fragments[name].selection_set, prefix, active | {name})

    walk(selection_set, "", frozenset())
    return tuple(roots), tuple(paths)
