"""The policy: a validated, compiled rules file and the decision it makes per request.

Schema (version 1)::

    version: 1
    default: allow | block | hold
    rules:
      - name: ...          # unique, required
        match: {...}       # see addons.policy.conditions
        action: ...        # optional: allow | block | hold
        reason: ...        # optional, shown to agents and reviewers

Capabilities beyond the core (masking, holds, identities, credentials, ...) add their
own keys by registering a compiler with :func:`rule_field` or :func:`top_level_field`,
together with the key's type, summary and example (:class:`SchemaField`): that one
declaration is what validation names, what ``portcullis explain`` prints and what the
reference in docs/rules.md is generated from. Unknown keys are always an error, never
silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addons.core.rulefile import Invalid, Problem, RuleFileError, SourceMap, Where, parse
from addons.policy.conditions import MATCH_KEYS, EvaluationError, Match, RequestView, compile_match

ACTIONS = ("allow", "hold", "block")
STRENGTH = {action: rank for rank, action in enumerate(ACTIONS)}

#: Extension compilers: key -> function(value, where, context) -> compiled value.
Compiler = Callable[[Any, Where, "LoadContext"], Any]


@dataclass(frozen=True)
class SchemaField:
    """One key of the rules file, declared once: validation, ``portcullis explain`` and
    the reference in docs/rules.md (``python -m gateway.docs``) all read this.

    ``type`` is the YAML shape in words, ``summary`` one line on what it does, ``example``
    a YAML value that compiles (tests/test_docs.py checks it), ``see`` the page that has
    the details. ``compile`` is None for the core keys the engine compiles itself.
    """

    name: str
    type: str
    summary: str
    example: str
    see: str = ""
    compile: Compiler | None = None


#: Every rule key and top-level key, core first, then each capability's in the order
#: they register. The core ones are compiled inline by compile_policy.
RULE_FIELDS: dict[str, SchemaField] = {f.name: f for f in (
    SchemaField("name", "string", "Unique name of the rule, shown to agents and reviewers.",
                "no-prod-deletes"),
    SchemaField("match", "mapping of conditions (see match keys)",
                "Every listed condition must hold; `match: {}` matches every request.",
                "{host: api.demo.test, method: DELETE}"),
    SchemaField("action", "allow | hold | block",
                "The decision when the rule matches; without it the rule decides nothing.", "block"),
    SchemaField("reason", "string", "Why, in words the agent and the reviewer read.",
                '"Agents may not delete tables"'),
)}
TOP_LEVEL_FIELDS: dict[str, SchemaField] = {f.name: f for f in (
    SchemaField("version", "1", "The schema version; must be 1.", "1"),
    SchemaField("default", "allow | hold | block",
                "The decision when no matching rule sets an action (default allow).", "block"),
    SchemaField("rules", "list of rules", "The rules, evaluated in file order.",
                "[{name: no-deletes, match: {method: DELETE}, action: block}]"),
)}
CORE_RULE_KEYS = tuple(RULE_FIELDS)
CORE_TOP_KEYS = tuple(TOP_LEVEL_FIELDS)

#: Whether addons.schema has imported every package that registers rules keys.
_assembled = False


def _registrar(table: dict[str, SchemaField], name: str, type: str, summary: str, example: str,
               see: str) -> Callable[[Compiler], Compiler]:
    def register(compiler: Compiler) -> Compiler:
        earlier = table.get(name)
        if earlier is not None and _origin(earlier.compile) != _origin(compiler):
            raise ValueError(f"rules key {name!r} is declared twice")  # (a module reload is not)
        table[name] = SchemaField(name, type, summary, example, see, compiler)
        return compiler

    return register


def _origin(compiler: Compiler | None) -> str:
    return f"{getattr(compiler, '__module__', '')}.{getattr(compiler, '__qualname__', '')}"


def rule_field(name: str, *, type: str, summary: str, example: str,
               see: str = "") -> Callable[[Compiler], Compiler]:
    """Register a compiler for an extra key on each rule (e.g. ``mask``), with its docs."""
    return _registrar(RULE_FIELDS, name, type, summary, example, see)


def top_level_field(name: str, *, type: str, summary: str, example: str,
                    see: str = "") -> Callable[[Compiler], Compiler]:
    """Register a compiler for an extra top-level key (e.g. ``identities``), with its docs."""
    return _registrar(TOP_LEVEL_FIELDS, name, type, summary, example, see)


def schema_assembled(modules: Sequence[str]) -> None:
    """Called by addons.schema once every package's rules keys are registered.

    Each table is put in one order, whatever order the imports happened to run in: the
    core keys, then each package's keys in the order of ``modules``, a package's own in
    the order it registered them (docs, ``explain`` and error messages list keys so)."""
    global _assembled
    packages = [module.rpartition(".")[0] + "." for module in modules]  # addons.holds.spec -> addons.holds.

    def position(item: tuple[str, Any]) -> int:
        module = getattr(item[1].compile, "__module__", None) or ""
        if not module or module.startswith("addons.policy."):
            return -1  # a core key
        return next((index for index, package in enumerate(packages) if module.startswith(package)), len(packages))

    for table in (TOP_LEVEL_FIELDS, RULE_FIELDS, MATCH_KEYS):
        ordered = sorted(table.items(), key=position)
        table.clear()
        table.update(ordered)
    _assembled = True


def require_schema() -> None:
    """Refuse to compile rules against a schema that lacks the packages' keys."""
    if not _assembled:
        raise RuntimeError("the rules schema is incomplete: import addons.schema first "
                           "(it registers every package's rules keys)")


@dataclass
class LoadContext:
    """Passed to extension compilers: where the file is, for resolving relative paths."""

    base_dir: Path
    filename: str


@dataclass(frozen=True)
class Rule:
    name: str
    index: int
    match: Match
    action: str | None = None
    reason: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class Verdict:
    """The outcome for one request: the action, the rule that decided it, all matches."""

    action: str
    rule: Rule | None
    matched: tuple[Rule, ...]

    @property
    def reason(self) -> str:
        if self.rule is None:
            return "no rule decided; default applies"
        return self.rule.reason or f"matched rule {self.rule.name}"

    @property
    def rule_names(self) -> list[str]:
        return [r.name for r in self.matched]


class RuleIndex:
    """Candidate rules for a request, found by host without scanning every rule.

    Rules with literal hosts are filed under that host, rules whose hosts are all
    ``*.suffix`` globs under the suffix; everything else is always a candidate.
    Given the request path, each of those groups is narrowed further by the literal
    leading segments of the rules' path patterns (see :class:`PathIndex`), so 1,000
    rules for one host cost about what the few that share the request's path prefix do.
    Candidates are then filtered by method and evaluated in file order.
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.exact: dict[str, list[Rule]] = {}
        self.suffix: dict[str, list[Rule]] = {}
        self.always: list[Rule] = []
        for rule in rules:
            hosts = rule.match.hosts
            if hosts and all(g.literal or _suffix_key(g.pattern) for g in hosts):
                for glob in hosts:
                    if glob.literal:
                        self.exact.setdefault(glob.pattern, []).append(rule)
                    else:
                        self.suffix.setdefault(_suffix_key(glob.pattern) or "", []).append(rule)
            else:
                self.always.append(rule)
        self._exact_paths = {host: PathIndex(r) for host, r in self.exact.items()}
        self._suffix_paths = {key: PathIndex(r) for key, r in self.suffix.items()}
        self._always_paths = PathIndex(self.always)

    def candidates(self, host: str, method: str, path: str | None = None) -> list[Rule]:
        """Rules that may match; `path` (normalised) narrows them further when given."""
        segments = PathIndex.segments(path)
        found: dict[int, Rule] = {}
        buckets = [self._exact_paths.get(host)]
        labels = host.split(".")
        buckets += [self._suffix_paths.get(".".join(labels[i:])) for i in range(1, len(labels))]
        for bucket in (*buckets, self._always_paths):
            if bucket is not None:
                for rule in bucket.lookup(segments):
                    found[rule.index] = rule
        return [
            found[i]
            for i in sorted(found)
            if not found[i].match.methods or method in found[i].match.methods
        ]


class PathIndex:
    """Rules filed in a trie under the literal leading segments of their path patterns.

    Every path a pattern matches starts with the pattern's segments up to the first one
    holding a ``*`` or ``?``, so a lookup walks the request's segments and collects the
    rules filed along the way: a superset of the rules whose path condition can hold.
    Keys are lower-cased (paths match case-insensitively). Non-ASCII segments are never
    keys, and a non-ASCII request path skips the trie: Unicode case folding (``ſ``/``s``,
    Kelvin sign/``k``) is left entirely to the regular expressions.
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)
        self.root = _PathNode()
        for rule in self.rules:
            for pattern in [g.pattern for g in rule.match.paths] or ["/**"]:
                node = self.root
                for segment in _literal_segments(pattern):
                    node = node.children.setdefault(segment, _PathNode())
                node.rules.append(rule)

    @staticmethod
    def segments(path: str | None) -> list[str] | None:
        """A normalised request path as trie keys; None: do not use the trie."""
        if path is None or not path.isascii():
            return None
        return path.lower().split("/")[1:]

    def lookup(self, segments: list[str] | None) -> list[Rule]:
        if segments is None:
            return self.rules
        node = self.root
        found = list(node.rules)
        for segment in segments:
            child = node.children.get(segment)
            if child is None:
                break
            node = child
            found += node.rules
        return found


class _PathNode:
    __slots__ = ("children", "rules")

    def __init__(self) -> None:
        self.children: dict[str, _PathNode] = {}
        self.rules: list[Rule] = []


def _literal_segments(pattern: str) -> list[str]:
    """'/v1/Tables/**' -> ['v1', 'tables']: the segments every matching path starts with."""
    out: list[str] = []
    for part in pattern.split("/")[1:]:
        if any(c in part for c in "*?") or not part.isascii():
            break
        out.append(part.lower())
    return out


def _suffix_key(pattern: str) -> str | None:
    """'*.prod.example.com' -> 'prod.example.com'; None for any other glob."""
    if pattern.startswith("*.") and not any(c in pattern[2:] for c in "*?"):
        return pattern[2:]
    return None


@dataclass(frozen=True)
class Policy:
    """A loaded rules file. ``settings`` holds compiled top-level extension keys."""

    source: str
    default: str
    rules: tuple[Rule, ...]
    settings: Mapping[str, Any]
    index: RuleIndex

    def evaluate(self, request: RequestView) -> Verdict:
        """Decide for one request. Raises EvaluationError when a condition cannot be
        evaluated; callers must treat that as a block (fail closed)."""
        matched = tuple(
            rule for rule in self.index.candidates(request.host, request.method, request.path)
            if _holds(rule, request)
        )
        deciding = [r for r in matched if r.action is not None]
        if not deciding:
            return Verdict(self.default, None, matched)
        strongest = max(deciding, key=lambda r: STRENGTH[r.action or "allow"])
        first = next(r for r in deciding if r.action == strongest.action)
        return Verdict(strongest.action or "allow", first, matched)


def _holds(rule: Rule, request: RequestView) -> bool:
    try:
        return rule.match.holds(request)
    except EvaluationError as exc:
        raise type(exc)(f"rule {rule.name}: {exc}") from None  # keeps its error_code


def load_policy(path: str | Path) -> Policy:
    """Read and compile a rules file. Raises RuleFileError naming file:line:column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError([Problem(str(path), 1, 1, "", f"cannot read rules file: {exc}")]) from None
    return compile_policy(text, str(path), base_dir=path.parent)


def compile_policy(text: str, filename: str = "<rules>", base_dir: Path | None = None) -> Policy:
    require_schema()
    data, source = parse(text, filename)
    context = LoadContext(base_dir or Path.cwd(), filename)
    problems: list[Problem] = []
    top = source.at()
    if not isinstance(data, dict):
        raise RuleFileError([top.problem("a rules file must be a mapping with 'version' and 'rules'")])
    for key in data:
        if key not in TOP_LEVEL_FIELDS:
            problems.append((top / key).problem(
                f"unknown top-level key {key!r}; expected one of {', '.join(TOP_LEVEL_FIELDS)}"
            ))
    if data.get("version") != 1:
        problems.append((top / "version").problem("version must be 1"))
    default = data.get("default", "allow")
    if default not in ACTIONS:
        problems.append((top / "default").problem(f"default must be one of {', '.join(ACTIONS)}"))
    settings: dict[str, Any] = {}
    for key, declared in TOP_LEVEL_FIELDS.items():
        if key in data and declared.compile is not None:
            _collect(problems, lambda c=declared.compile, k=key: settings.__setitem__(k, c(data[k], top / k, context)))
    rules = _compile_rules(data.get("rules"), top / "rules", source, context, problems)
    if problems:
        raise RuleFileError(problems)
    return Policy(filename, default, tuple(rules), settings, RuleIndex(rules))


def _collect(problems: list[Problem], step: Callable[[], Any]) -> None:
    try:
        step()
    except Invalid as exc:
        problems.append(exc.problem)


def _compile_rules(
    data: Any, where: Where, source: SourceMap, context: LoadContext, problems: list[Problem]
) -> list[Rule]:
    if data is None:
        return []
    if not isinstance(data, list):
        problems.append(where.problem("rules must be a list"))
        return []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(data):
        at = where / i
        before = len(problems)
        rule = _compile_rule(spec, i, at, source, context, problems)
        if rule is None or len(problems) > before:
            continue
        if rule.name in seen:
            problems.append((at / "name").problem(
                f"duplicate rule name {rule.name!r} (first used by rules[{seen[rule.name]}])"
            ))
            continue
        seen[rule.name] = i
        rules.append(rule)
    return rules


def _compile_rule(
    spec: Any, index: int, at: Where, source: SourceMap, context: LoadContext, problems: list[Problem]
) -> Rule | None:
    if not isinstance(spec, dict):
        problems.append(at.problem("each rule must be a mapping"))
        return None
    for key in spec:
        if key not in RULE_FIELDS:
            problems.append((at / key).problem(
                f"unknown rule key {key!r}; expected one of {', '.join(RULE_FIELDS)}"
            ))
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append((at / "name").problem("every rule needs a non-empty string name"))
        name = f"rules[{index}]"
    action = spec.get("action")
    if action is not None and action not in ACTIONS:
        problems.append((at / "action").problem(f"action must be one of {', '.join(ACTIONS)}"))
    reason = spec.get("reason")
    if reason is not None and not isinstance(reason, str):
        problems.append((at / "reason").problem("reason must be a string"))
    if "match" not in spec:
        problems.append(at.problem("every rule needs a match block (use match: {} for all requests)"))
    compiled: dict[str, Any] = {}
    _collect(problems, lambda: compiled.__setitem__("match", compile_match(spec.get("match"), at / "match")))
    extensions: dict[str, Any] = {}
    for key, declared in RULE_FIELDS.items():
        if key in spec and declared.compile is not None:
            _collect(problems, lambda c=declared.compile, k=key: extensions.__setitem__(k, c(spec[k], at / k, context)))
    if "match" not in compiled:
        return None
    return Rule(
        name=name,
        index=index,
        match=compiled["match"],
        action=action,
        reason=reason,
        extensions=extensions,
        line=source.position(at.path)[0],
    )
