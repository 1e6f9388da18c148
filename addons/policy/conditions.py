"""The `match:` block of a rule: compiled conditions evaluated against a request.

A condition is compiled once when the rules file loads; evaluation touches only what
the condition needs (the request's fields are read at most once per request, and only
if a rule with a `json` condition is a candidate).

`json` conditions judge the request's fields wherever a framework reads them (JSON,
form and multipart bodies, the query string; addons.policy.fields) and are typed and fail
closed: a value that cannot be read as the type the operator needs, a body that cannot
be read, or readings that disagree raise EvaluationError, which blocks the request.
Rule regexes (and globs with several wildcards) run on RE2, in linear time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jsonpath_ng import jsonpath as jp
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import parse as parse_jsonpath
from mitmproxy import flowfilter, http

from addons.core.flowstate import FlowState
from addons.core.jsonbody import (
    MAX_JSON_BODY,
    NOT_JSON,
    UninspectableBody,
    UnsupportedCharset,
    body_content,
)
from addons.core.normalize import normalize_host, normalize_path
from addons.core.rulefile import Where
from addons.core.userregex import UserRegex, compile_linear, compile_user_regex
from addons.policy.fields import query_readings, readings

__all__ = ["MAX_JSON_BODY", "NOT_JSON"]  # re-exported: callers import them from here


class EvaluationError(Exception):
    """A condition could not be evaluated; the policy blocks rather than guess."""

    #: the error code the agent is given (addons.policy.addon)
    error_code = "policy_error"


class CharsetRefused(EvaluationError):
    """The body's charset is not one the policy reads the way every upstream would."""

    error_code = "unsupported_charset"


class Glob:
    """Shell-style pattern: ``*`` and ``?`` (and ``**`` for paths, which spans slashes).

    In paths ``*`` stops at ``/``; a trailing ``/**`` also matches the bare prefix, so
    ``/v1/tables/**`` covers ``/v1/tables`` itself.
    """

    def __init__(self, pattern: str, *, path: bool = False, ignore_case: bool = False) -> None:
        self.pattern = pattern
        self.literal = not any(c in pattern for c in "*?")
        regex = _glob_to_regex(pattern, path=path)
        if sum(pattern.count(c) for c in "*?") > 1:
            # Several wildcards backtrack polynomially in Python's re (`*a*a*a*b` on a
            # long path): linear-time RE2. One wildcard cannot, and re is 10x cheaper
            # per call for the globs nearly every rule has.
            self._regex = compile_linear(regex, ignore_case=ignore_case)
        else:
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
        *,
        state: FlowState | None = None,
    ) -> None:
        self.flow = flow
        #: The flow's state, where conditions leave what they learned (e.g. a SQL
        #: classification); None when the rules are only being tried (explain, tests).
        self.state = state
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
    def fields(self) -> tuple[Any, ...]:
        """Every reading of the request's fields (body and query; see addons.policy.fields).
        Raises EvaluationError if they cannot be read unambiguously."""
        request = self.flow.request
        try:
            return readings(request.headers.get("content-type", ""), body_content(request),
                            self._raw_query)
        except UnsupportedCharset as exc:
            raise CharsetRefused(f"request body: {exc}") from None
        except UninspectableBody as exc:
            raise EvaluationError(f"request body: {exc}") from None

    @cached_property
    def query_fields(self) -> tuple[Any, ...]:
        """Every reading of the query string's fields (for typed `query` conditions)."""
        try:
            return query_readings(self._raw_query) if self._raw_query else ({},)
        except UninspectableBody as exc:
            raise EvaluationError(f"query string: {exc}") from None

    @property
    def _raw_query(self) -> str:
        return self.flow.request.path.partition("?")[2].partition("#")[0]

# --- typed value conditions --------------------------------------------------------
#
# Frameworks coerce: Express and pydantic read "25000" as a number where one is expected,
# form and query values are always strings. So a value is judged as the type the
# operator (or operand) needs, and a value that cannot be read as that type is an
# EvaluationError (the request is refused), never "does not match": otherwise
# `[25000]`, `"25000"` or `true` would walk past `gt: 1000`.

_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
#: Boolean spellings accepted in strings (pydantic's, which include query strings' 1/0).
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def as_number(value: Any, op: str) -> int | float:
    """The value as a number (numeric strings included), or EvaluationError."""
    if _is_number(value):
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    shown = "a non-numeric string" if isinstance(value, str) else _kind(value)
    raise EvaluationError(f"{op} needs a number, got {shown}")


def as_bool(value: Any, op: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if _is_number(value) and value in (0, 1):
        return bool(value)
    raise EvaluationError(f"{op} needs a boolean (true/false/1/0/yes/no), got {_kind(value)}")


def _equal(value: Any, operand: Any, op: str) -> bool:
    """Typed equality: the value is read as the operand's type; another type is an error
    (so `"5"` is 5 and `ne: 5` is false for it, and `["x"]` is not silently unequal)."""
    if isinstance(operand, bool):
        return as_bool(value, op) == operand
    if _is_number(operand):
        return as_number(value, op) == operand
    if isinstance(operand, str):
        if not isinstance(value, str):
            raise EvaluationError(f"{op} needs a string, got {_kind(value)}")
        return value == operand
    if operand is None:
        return value is None
    if type(value) is not type(operand):  # list or mapping operand
        raise EvaluationError(f"{op} needs {_kind(operand)}, got {_kind(value)}")
    return _same(value, operand)


def _same(value: Any, operand: Any) -> bool:
    """JSON equality for structured operands: true is not 1, and 1 equals 1.0."""
    if isinstance(value, bool) or isinstance(operand, bool):
        return isinstance(value, bool) and isinstance(operand, bool) and value == operand
    if isinstance(value, list) and isinstance(operand, list):
        return len(value) == len(operand) and all(_same(a, b) for a, b in zip(value, operand, strict=True))
    if isinstance(value, dict) and isinstance(operand, dict):
        return value.keys() == operand.keys() and all(_same(value[k], operand[k]) for k in value)
    return value == operand


def _in(value: Any, options: list[Any]) -> bool:
    errors = []
    for option in options:
        try:
            if _equal(value, option, "in"):
                return True
        except EvaluationError as exc:
            errors.append(exc)
    if errors and len(errors) == len(options):  # comparable with none of the options
        raise errors[0]
    return False


def _regex(value: Any, pattern: Any) -> bool:
    if not isinstance(value, str):
        raise EvaluationError(f"regex needs a string, got {_kind(value)}")
    return pattern.search(value) is not None


#: operator -> predicate(selected value, operand from the rule); raises EvaluationError
#: when the value cannot be read as the type the operator needs.
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda v, x: as_number(v, "gt") > x,
    "lt": lambda v, x: as_number(v, "lt") < x,
    "gte": lambda v, x: as_number(v, "gte") >= x,
    "lte": lambda v, x: as_number(v, "lte") <= x,
    "eq": lambda v, x: _equal(v, x, "eq"),
    "ne": lambda v, x: not _equal(v, x, "ne"),
    "in": _in,
    "regex": _regex,
}
_NUMBER_OPS = ("gt", "lt", "gte", "lte")
VALUE_OPS = {*_OPERATORS, "exists"}


@dataclass(frozen=True)
class ValueCondition:
    """All listed operators must hold for one selected value."""

    ops: tuple[tuple[str, Any], ...]

    def holds(self, value: Any) -> bool:
        # Every operator runs (no short cut), so a wrong type is reported whatever the order.
        results = [_OPERATORS[op](value, operand) for op, operand in self.ops]
        return all(results)


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
        if op == "in" and (not isinstance(operand, list) or not operand):
            at.fail("in needs a non-empty list of values")
        if op == "exists":
            if not isinstance(operand, bool):
                at.fail("exists needs true or false")
            exists = operand
            continue
        if op == "regex":
            operand = compile_regex(operand, at)
        ops.append((op, operand))
    return ValueCondition(tuple(ops)), exists


def compile_regex(pattern: Any, where: Where) -> UserRegex:
    """A rule's regex, compiled with RE2 (linear time; see addons.core.userregex)."""
    return compile_user_regex(pattern, where)


def compile_jsonpath(expression: Any, where: Where) -> Any:
    if not isinstance(expression, str) or not expression.startswith("$"):
        where.fail("a JSONPath must be a string starting with '$'")
    try:
        return parse_jsonpath(expression)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # noqa: BLE001
        # jsonpath-ng raises plain Exception for some syntax errors.
        where.fail(f"invalid JSONPath {expression!r}: {exc}")


def fold_field_names(node: Any) -> Any:
    """Case-fold every field name in a parsed JSONPath (filters included), in place:
    request fields are read with case-folded keys (see addons.policy.fields)."""
    if isinstance(node, jp.Fields):
        node.fields = tuple(f.casefold() for f in node.fields)
    for name in ("left", "right", "target"):
        child = getattr(node, name, None)
        if child is not None and not isinstance(child, str | int | float):
            fold_field_names(child)
    for expression in getattr(node, "expressions", None) or ():
        fold_field_names(expression)
    return node


@dataclass(frozen=True)
class JsonCondition:
    """A condition on request fields: `json:` (every place, see addons.policy.fields) or a
    typed `query:` condition (the query string only)."""

    expression: str
    path: Any
    condition: ValueCondition
    exists: bool | None
    source: str = "fields"  # "fields" or "query": which RequestView readings it judges

    def holds(self, readings: tuple[Any, ...]) -> bool:
        # Each reading is one way the upstream may read the fields (duplicate keys, case
        # variants, a field both in the query and the body): the answer must not depend
        # on which one it picks.
        outcomes = {self._holds_for(d) for d in readings}
        if len(outcomes) > 1:
            raise EvaluationError(
                f"{self._name()}: the request gives different answers depending on which copy "
                "of the field the upstream reads (duplicate keys, case variants, or a field repeated or in several places)"
            )
        return outcomes.pop()

    def _name(self) -> str:
        return f"JSONPath {self.expression}" if self.source == "fields" else f"query {self.expression}"

    def _holds_for(self, document: Any) -> bool:
        try:
            values = [m.value for m in self.path.find(document)]
        except RecursionError:
            raise EvaluationError(f"{self._name()} recursed too deeply") from None
        if self.exists is not None and bool(values) != self.exists:
            return False
        if not self.condition.ops:
            return True
        try:
            results = [self.condition.holds(v) for v in values]
        except EvaluationError as exc:
            raise EvaluationError(f"{self._name()}: {exc}") from None
        return any(results)


def compile_field_condition(expression: str, spec: Any, where: Where, source: str = "fields") -> JsonCondition:
    if source == "query":
        path = fold_field_names(jp.Child(jp.Root(), jp.Fields(expression)))
    else:
        path = fold_field_names(compile_jsonpath(expression, where))
    value_condition, exists = compile_value_condition(spec, where)
    return JsonCondition(expression, path, value_condition, exists, source)


# --- the match block ---------------------------------------------------------------


@dataclass
class Match:
    """Every listed condition must hold. Empty lists mean "not constrained"."""

    hosts: tuple[Glob, ...] = ()
    methods: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()
    paths: tuple[Glob, ...] = ()
    query: tuple[tuple[str, Glob], ...] = ()
    typed_query: tuple[JsonCondition, ...] = ()
    headers: tuple[tuple[str, Glob], ...] = ()
    json: tuple[JsonCondition, ...] = ()
    filter: Any = None
    identities: tuple[Glob, ...] = ()
    groups: frozenset[str] = frozenset()
    #: conditions of keys registered with match_key() (sql:, graphql:), each with holds(RequestView)
    extra: tuple[Any, ...] = ()
    needs_body: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.needs_body = bool(self.json) or bool(self.extra) or self.filter is not None

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
        if not all(cond.holds(req.query_fields) for cond in self.typed_query):
            return False
        for name, glob in self.headers:
            if not any(glob.matches(v) for v in req.headers.get_all(name)):
                return False
        if self.filter is not None and not self.filter(req.flow):
            return False
        if not all(cond.holds(req.fields) for cond in self.json):
            return False
        return all(cond.holds(req) for cond in self.extra)


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


# Each key of the match block, declared once (name, type, summary, example) next to the
# function that compiles it: validation ("expected one of ...") and the table in
# docs/rules.md (python -m gateway.docs) read MATCH_KEYS.


@dataclass(frozen=True)
class MatchKey:
    """One key of a rule's `match:` block.

    ``compile(value, where)`` returns the :class:`Match` fields the key sets (core keys),
    or, for keys other modules register with :func:`match_key` (``sql:``, ``graphql:``),
    a condition with ``holds(RequestView) -> bool`` that goes into ``Match.extra``.
    """

    name: str
    type: str
    summary: str
    example: str
    compile: Callable[[Any, Where], Any]
    see: str = ""
    extra: bool = False


def _hosts(value: Any, where: Where) -> dict[str, Any]:
    return {"hosts": tuple(Glob(normalize_host(h), ignore_case=True) for h in _str_list(value, where))}


def _methods(value: Any, where: Where) -> dict[str, Any]:
    return {"methods": frozenset(m.upper() for m in _str_list(value, where))}


def _ports(value: Any, where: Where) -> dict[str, Any]:
    ports = value if isinstance(value, list) else [value]
    if not ports or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        where.fail("expected a port number or a list of port numbers")
    return {"ports": frozenset(ports)}


def _paths(value: Any, where: Where) -> dict[str, Any]:
    paths = _str_list(value, where)
    for i, p in enumerate(paths):
        if not p.startswith("/"):
            (where / i if isinstance(value, list) else where).fail("a path pattern must start with '/'")
    # Case-insensitive: many upstreams route /V1/Tables like /v1/tables.
    return {"paths": tuple(Glob(p, path=True, ignore_case=True) for p in paths)}


def _query(value: Any, where: Where) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        where.fail("expected a mapping of name -> glob or typed condition")
    globs, typed = {}, []
    for name, cond in value.items():
        if isinstance(cond, dict):  # typed: {eq: false}, {gt: 10}, ...
            typed.append(compile_field_condition(str(name), cond, where / name, "query"))
        else:
            globs[name] = cond
    if globs:
        _str_mapping(globs, where)
    return {"query": tuple((k, Glob(str(v))) for k, v in globs.items()), "typed_query": tuple(typed)}


def _headers(value: Any, where: Where) -> dict[str, Any]:
    h = _str_mapping(value, where)
    return {"headers": tuple((k.lower(), Glob(str(v), ignore_case=True)) for k, v in h.items())}


def _json(value: Any, where: Where) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        where.fail("expected a mapping of JSONPath -> condition")
    return {"json": tuple(compile_field_condition(expression, cond, where / expression)
                          for expression, cond in value.items())}


def _filter(value: Any, where: Where) -> dict[str, Any]:
    if not isinstance(value, str):
        where.fail("a filter must be a mitmproxy filter expression string")
    try:
        return {"filter": flowfilter.parse(value)}
    except ValueError as exc:
        where.fail(f"invalid mitmproxy filter: {exc}")


def _identities(value: Any, where: Where) -> dict[str, Any]:
    return {"identities": tuple(Glob(i) for i in _str_list(value, where))}


def _groups(value: Any, where: Where) -> dict[str, Any]:
    return {"groups": frozenset(_str_list(value, where))}


#: Every match key: the core ones below, then those registered with match_key().
MATCH_KEYS: dict[str, MatchKey] = {k.name: k for k in (
    MatchKey("host", "glob or list", "the normalised host matches any glob (`*` spans dots)",
             '"*.prod.example.com"', _hosts),
    MatchKey("method", "string or list", "the method is one of them (case-insensitive)",
             "[DELETE, PUT]", _methods),
    MatchKey("port", "number or list", "the destination port is one of them", "[443, 8443]", _ports),
    MatchKey("path", "glob or list, starting with `/`",
             "the normalised path matches (case-insensitive); `*` stays within a segment, `**` spans "
             "segments, a trailing `/**` also matches the bare prefix", '"/v1/tables/**"', _paths),
    MatchKey("query", "mapping name -> glob or typed condition",
             "a glob: some value of the parameter matches it (case-sensitive text); a condition "
             "(`{eq: false}`, `{gt: 10}`): see typed query conditions", "{dry_run: {eq: false}}", _query,
             see="rules.md#typed-query-conditions"),
    MatchKey("headers", "mapping name -> glob",
             "every named header has a value matching its glob (case-insensitive)",
             '{content-type: "application/json*"}', _headers),
    MatchKey("json", "mapping JSONPath -> condition",
             "for every entry, some value the path selects in the request's fields (JSON, form, "
             "multipart, query) satisfies the condition", '{"$.amount": {gt: 1000}}', _json,
             see="rules.md#fields-where-json-conditions-look"),
    MatchKey("filter", "mitmproxy filter expression", "the expression matches the flow",
             '"~d example.com & ~m POST"', _filter),
    MatchKey("identity", "glob or list", "the agent's identity matches", "[billing-agent]", _identities,
             see="identity.md"),
    MatchKey("groups", "string or list", "the agent is in any of the groups", "[billing]", _groups,
             see="identity.md"),
)}


def match_key(name: str, *, type: str, summary: str, example: str,
              see: str = "") -> Callable[[Callable[[Any, Where], Any]], Callable[[Any, Where], Any]]:
    """Register a match key of another module: ``compiler(spec, where)`` returns a
    condition with ``holds(RequestView) -> bool`` (addons.querylang.rules: sql, graphql)."""

    def register(compiler: Callable[[Any, Where], Any]) -> Callable[[Any, Where], Any]:
        earlier = MATCH_KEYS.get(name)
        if earlier is not None and (not earlier.extra or earlier.compile.__qualname__ != compiler.__qualname__):
            raise ValueError(f"match key {name!r} is declared twice")
        MATCH_KEYS[name] = MatchKey(name, type, summary, example, compiler, see, extra=True)
        return compiler

    return register


def compile_match(spec: Any, where: Where) -> Match:
    if spec is None:
        return Match()
    if not isinstance(spec, dict):
        where.fail("match must be a mapping of conditions")
    for key in spec:
        if key not in MATCH_KEYS:
            (where / key).fail(f"unknown match key {key!r}; expected one of {', '.join(MATCH_KEYS)}")
    kwargs: dict[str, Any] = {
        "extra": tuple(MATCH_KEYS[k].compile(spec[k], where / k) for k in spec if MATCH_KEYS[k].extra),
    }
    for key in MATCH_KEYS.values():  # declared order: the first mistake reported is stable
        if not key.extra and key.name in spec:
            kwargs.update(key.compile(spec[key.name], where / key.name))
    return Match(**kwargs)
