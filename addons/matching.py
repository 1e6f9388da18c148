"""The `match:` block of a rule: compiled conditions evaluated against a request.

A condition is compiled once when the rules file loads; evaluation touches only what
the condition needs (the JSON body is parsed at most once per request, and only if a
rule with a `json` condition is a candidate).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import parse as parse_jsonpath
from mitmproxy import flowfilter, http

from addons.jsonbody import MAX_JSON_BODY, NOT_JSON, UninspectableBody, Variants, read_json_body
from addons.normalize import normalize_host, normalize_path
from addons.rulefile import Where

__all__ = ["MAX_JSON_BODY", "NOT_JSON"]  # re-exported: callers import them from here


class EvaluationError(Exception):
    """A condition could not be evaluated; the policy blocks rather than guess."""


class Glob:
    """Shell-style pattern: ``*`` and ``?`` (and ``**`` for paths, which spans slashes).

    In paths ``*`` stops at ``/``; a trailing ``/**`` also matches the bare prefix, so
    ``/v1/tables/**`` covers ``/v1/tables`` itself.
    """

    def __init__(self, pattern: str, *, path: bool = False, ignore_case: bool = False) -> None:
        self.pattern = pattern
        self.literal = not any(c in pattern for c in "*?")
        regex = _glob_to_regex(pattern, path=path)
        self._regex = re.compile(regex, re.IGNORECASE if ignore_case else 0)

    def matches(self, value: str) -> bool:
        return self._regex.fullmatch(value) is not None

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def _glob_to_regex(pattern: str, *, path: bool) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("/**", i) and i + 3 == len(pattern) and path:
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*" if path else ".*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]" if path else ".")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class RequestView:
    """What the rule engine sees of one request, in normalised form."""

    def __init__(
        self,
        flow: http.HTTPFlow,
        identity: str = "anonymous",
        groups: Iterable[str] = (),
    ) -> None:
        self.flow = flow
        request = flow.request
        self.method = request.method.upper()
        self.host = normalize_host(request.host)
        self.port = request.port
        self.path = normalize_path(request.path)
        self.identity = identity
        self.groups = frozenset(groups)

    @property
    def headers(self) -> http.Headers:
        return self.flow.request.headers

    @property
    def query(self) -> Any:
        return self.flow.request.query

    @cached_property
    def json_body(self) -> Any:
        """The request body as JSON, Variants (duplicate keys) or NOT_JSON. Raises
        EvaluationError if the body cannot be examined (see addons.jsonbody)."""
        try:
            return read_json_body(self.flow.request)
        except UninspectableBody as exc:
            raise EvaluationError(f"request body: {exc}") from None

# --- JSON value conditions ---------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(value: Any, operand: Any) -> bool:
    """JSON equality: true is not 1, and 1 equals 1.0."""
    if isinstance(value, bool) or isinstance(operand, bool):
        return isinstance(value, bool) and isinstance(operand, bool) and value == operand
    return value == operand


#: operator -> predicate(selected value, operand from the rule)
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda v, x: _is_number(v) and v > x,
    "lt": lambda v, x: _is_number(v) and v < x,
    "gte": lambda v, x: _is_number(v) and v >= x,
    "lte": lambda v, x: _is_number(v) and v <= x,
    "eq": _same,
    "ne": lambda v, x: not _same(v, x),
    "in": lambda v, x: any(_same(v, item) for item in x),
    "regex": lambda v, x: isinstance(v, str) and x.search(v) is not None,
}
_NUMBER_OPS = ("gt", "lt", "gte", "lte")
VALUE_OPS = {*_OPERATORS, "exists"}


@dataclass(frozen=True)
class ValueCondition:
    """All listed operators must hold for one selected value."""

    ops: tuple[tuple[str, Any], ...]

    def holds(self, value: Any) -> bool:
        return all(_OPERATORS[op](value, operand) for op, operand in self.ops)


def compile_value_condition(spec: Any, where: Where) -> tuple[ValueCondition, bool | None]:
    """Returns the condition and the `exists` requirement (None when not given)."""
    if not isinstance(spec, dict):
        return ValueCondition((("eq", spec),)), None
    if not spec:
        where.fail("empty condition: use one of " + ", ".join(sorted(VALUE_OPS)))
    ops: list[tuple[str, Any]] = []
    exists: bool | None = None
    for op, operand in spec.items():
        at = where / op
        if op not in VALUE_OPS:
            at.fail(f"unknown operator {op!r}; expected one of {', '.join(sorted(VALUE_OPS))}")
        if op in _NUMBER_OPS and not _is_number(operand):
            at.fail(f"{op} needs a number, got {type(operand).__name__}")
        if op == "in" and not isinstance(operand, list):
            at.fail("in needs a list of values")
        if op == "exists":
            if not isinstance(operand, bool):
                at.fail("exists needs true or false")
            exists = operand
            continue
        if op == "regex":
            operand = compile_regex(operand, at)
        ops.append((op, operand))
    return ValueCondition(tuple(ops)), exists


def compile_regex(pattern: Any, where: Where) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        where.fail("a regex must be a string")
    try:
        return re.compile(pattern)
    except re.error as exc:
        where.fail(f"invalid regex: {exc}")


def compile_jsonpath(expression: Any, where: Where) -> Any:
    if not isinstance(expression, str) or not expression.startswith("$"):
        where.fail("a JSONPath must be a string starting with '$'")
    try:
        return parse_jsonpath(expression)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # noqa: BLE001
        # jsonpath-ng raises plain Exception for some syntax errors.
        where.fail(f"invalid JSONPath {expression!r}: {exc}")


@dataclass(frozen=True)
class JsonCondition:
    expression: str
    path: Any
    condition: ValueCondition
    exists: bool | None

    def holds(self, document: Any) -> bool:
        if document is NOT_JSON:
            return False
        if isinstance(document, Variants):
            # Duplicate keys: the upstream may read any copy, so the answer must not
            # depend on which one (a lenient parser must not be a way around a rule).
            outcomes = {self._holds_for(d) for d in document.documents}
            if len(outcomes) > 1:
                raise EvaluationError(
                    f"JSONPath {self.expression}: the body's duplicate keys give different answers"
                )
            return outcomes.pop()
        return self._holds_for(document)

    def _holds_for(self, document: Any) -> bool:
        try:
            values = [m.value for m in self.path.find(document)]
        except RecursionError:
            raise EvaluationError(f"JSONPath {self.expression} recursed too deeply") from None
        if self.exists is not None and bool(values) != self.exists:
            return False
        if not self.condition.ops:
            return True
        return any(self.condition.holds(v) for v in values)


# --- the match block ---------------------------------------------------------------


@dataclass
class Match:
    """Every listed condition must hold. Empty lists mean "not constrained"."""

    hosts: tuple[Glob, ...] = ()
    methods: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()
    paths: tuple[Glob, ...] = ()
    query: tuple[tuple[str, Glob], ...] = ()
    headers: tuple[tuple[str, Glob], ...] = ()
    json: tuple[JsonCondition, ...] = ()
    filter: Any = None
    identities: tuple[Glob, ...] = ()
    groups: frozenset[str] = frozenset()
    needs_body: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.needs_body = bool(self.json) or self.filter is not None

    def holds(self, req: RequestView) -> bool:
        if self.methods and req.method not in self.methods:
            return False
        if self.hosts and not any(g.matches(req.host) for g in self.hosts):
            return False
        if self.ports and req.port not in self.ports:
            return False
        if self.paths and not any(g.matches(req.path) for g in self.paths):
            return False
        if self.identities and not any(g.matches(req.identity) for g in self.identities):
            return False
        if self.groups and not (self.groups & req.groups):
            return False
        for name, glob in self.query:
            if not any(glob.matches(v) for v in req.query.get_all(name)):
                return False
        for name, glob in self.headers:
            if not any(glob.matches(v) for v in req.headers.get_all(name)):
                return False
        if self.filter is not None and not self.filter(req.flow):
            return False
        return all(cond.holds(req.json_body) for cond in self.json)


MATCH_KEYS = (
    "host", "method", "port", "path", "query", "headers", "json", "filter", "identity", "groups",
)


def _str_list(value: Any, where: Where) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        where.fail("must not be an empty list")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            (where / i if isinstance(value, list) else where).fail("expected a non-empty string")
    return items


def _str_mapping(value: Any, where: Where) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not value:
        where.fail("expected a mapping of name -> pattern")
    for key, item in value.items():
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            (where / key).fail("expected a string pattern")
    return value


def compile_match(spec: Any, where: Where) -> Match:
    if spec is None:
        return Match()
    if not isinstance(spec, dict):
        where.fail("match must be a mapping of conditions")
    for key in spec:
        if key not in MATCH_KEYS:
            (where / key).fail(f"unknown match key {key!r}; expected one of {', '.join(MATCH_KEYS)}")
    kwargs: dict[str, Any] = {}
    if "host" in spec:
        kwargs["hosts"] = tuple(
            Glob(normalize_host(h), ignore_case=True) for h in _str_list(spec["host"], where / "host")
        )
    if "method" in spec:
        kwargs["methods"] = frozenset(m.upper() for m in _str_list(spec["method"], where / "method"))
    if "port" in spec:
        ports = spec["port"] if isinstance(spec["port"], list) else [spec["port"]]
        if not ports or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
            (where / "port").fail("expected a port number or a list of port numbers")
        kwargs["ports"] = frozenset(ports)
    if "path" in spec:
        paths = _str_list(spec["path"], where / "path")
        for i, p in enumerate(paths):
            if not p.startswith("/"):
                (where / "path" / i if isinstance(spec["path"], list) else where / "path").fail(
                    "a path pattern must start with '/'"
                )
        # Case-insensitive: many upstreams route /V1/Tables like /v1/tables.
        kwargs["paths"] = tuple(Glob(p, path=True, ignore_case=True) for p in paths)
    if "query" in spec:
        q = _str_mapping(spec["query"], where / "query")
        kwargs["query"] = tuple((k, Glob(str(v))) for k, v in q.items())
    if "headers" in spec:
        h = _str_mapping(spec["headers"], where / "headers")
        kwargs["headers"] = tuple((k.lower(), Glob(str(v), ignore_case=True)) for k, v in h.items())
    if "json" in spec:
        j = spec["json"]
        if not isinstance(j, dict) or not j:
            (where / "json").fail("expected a mapping of JSONPath -> condition")
        conditions = []
        for expression, cond in j.items():
            at = where / "json" / expression
            path = compile_jsonpath(expression, at)
            value_condition, exists = compile_value_condition(cond, at)
            conditions.append(JsonCondition(expression, path, value_condition, exists))
        kwargs["json"] = tuple(conditions)
    if "filter" in spec:
        expr = spec["filter"]
        if not isinstance(expr, str):
            (where / "filter").fail("a filter must be a mitmproxy filter expression string")
        try:
            kwargs["filter"] = flowfilter.parse(expr)
        except ValueError as exc:
            (where / "filter").fail(f"invalid mitmproxy filter: {exc}")
    if "identity" in spec:
        kwargs["identities"] = tuple(Glob(i) for i in _str_list(spec["identity"], where / "identity"))
    if "groups" in spec:
        kwargs["groups"] = frozenset(_str_list(spec["groups"], where / "groups"))
    return Match(**kwargs)
