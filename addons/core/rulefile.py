"""Read a YAML rules file into plain Python data and remember where each value came from.

Every rejection the loader makes names ``file:line:column`` and the dotted field, so an
operator can jump straight to the mistake. PyYAML's composer gives us the node marks;
we build the data ourselves so that duplicate keys are an error instead of "last wins".

Anchors and aliases (``&a`` / ``*a``) are refused while composing, before any node is
built: a recursive alias made the builder recurse until the reload task died, and a
"billion laughs" chain of aliases expands to gigabytes from a few hundred bytes. Rules
files gain nothing from them that a plain copy would not give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rules file, with its position (1-based)."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f" {self.field}:" if self.field else ""
        return f"{self.file}:{self.line}:{self.column}:{where} {self.message}"


class RuleFileError(Exception):
    """A rules file was rejected; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))


class Invalid(Exception):
    """Raised by validators for one field; collected into a RuleFileError by the loader."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))


def format_field(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class SourceMap:
    """Positions of every key and value of a parsed document, by field path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.positions: dict[FieldPath, tuple[int, int]] = {}

    def position(self, path: FieldPath) -> tuple[int, int]:
        """The position of ``path`` or of its nearest ancestor that has one."""
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, (1, 1))

    def at(self, path: FieldPath = ()) -> Where:
        return Where(self, path)


class Where:
    """A cursor into a document, used by validators to report problems precisely."""

    def __init__(self, source: SourceMap, path: FieldPath) -> None:
        self.source = source
        self.path = path

    def __truediv__(self, key: str | int) -> Where:
        return Where(self.source, (*self.path, key))

    def problem(self, message: str) -> Problem:
        line, column = self.source.position(self.path)
        return Problem(self.source.filename, line, column, format_field(self.path), message)

    def fail(self, message: str) -> NoReturn:
        raise Invalid(self.problem(message))

    def mapping(self, value: Any, allowed: tuple[str, ...], expected: str) -> dict[str, Any]:
        """``value`` as a mapping whose keys are all in ``allowed``; else fail here."""
        if not isinstance(value, dict):
            self.fail(f"expected a mapping with {expected}")
        for key in value:
            if key not in allowed:
                (self / key).fail(f"unknown key {key!r}; expected one of {', '.join(allowed)}")
        return value


class AliasRefused(yaml.MarkedYAMLError):
    """An anchor or alias was found; raised by NoAliasLoader at its position."""


class NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses anchors and aliases (see the module docstring)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise AliasRefused(problem=f"YAML aliases (*{event.anchor}) are not allowed; "
                                       "write the value out in full", problem_mark=event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise AliasRefused(problem=f"YAML anchors (&{event.anchor}) are not allowed; "
                                       "write the value out in full", problem_mark=event.start_mark)
        return super().compose_node(parent, index)


def compose_without_aliases(text: str) -> yaml.Node | None:
    """The YAML node tree of ``text``; raises AliasRefused on any anchor or alias."""
    return yaml.compose(text, Loader=NoAliasLoader)


def parse(text: str, filename: str) -> tuple[Any, SourceMap]:
    """Parse YAML text into data and a SourceMap; syntax errors become RuleFileError."""
    source = SourceMap(filename)
    try:
        root = compose_without_aliases(text)
    except AliasRefused as exc:
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise RuleFileError([Problem(filename, line, column, "", str(exc.problem))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"YAML syntax error: {exc.problem or exc.context}"
        raise RuleFileError([Problem(filename, line, column, "", message)]) from None
    except yaml.YAMLError as exc:  # e.g. a reader error on control characters
        raise RuleFileError([Problem(filename, 1, 1, "", f"YAML error: {exc}")]) from None
    if root is None:
        return None, source
    constructor = yaml.constructor.SafeConstructor()
    problems: list[Problem] = []
    data = _build(root, (), source, constructor, problems)
    if problems:
        raise RuleFileError(problems)
    return data, source


def _build(
    node: yaml.Node,
    path: FieldPath,
    source: SourceMap,
    constructor: yaml.constructor.SafeConstructor,
    problems: list[Problem],
) -> Any:
    source.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(source.at(path).problem("YAML merge keys (<<) are not supported"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(source.at(path).problem("mapping keys must be plain strings"))
                continue
            try:
                key = str(constructor.construct_object(key_node))
            except yaml.constructor.ConstructorError as exc:  # e.g. an unknown !tag on the key
                line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                problems.append(Problem(source.filename, line, column, format_field(path),
                                        f"cannot read key: {exc.problem}"))
                continue
            child = (*path, key)
            source.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in result:
                problems.append(source.at(child).problem(f"duplicate key {key!r}"))
                continue
            result[key] = _build(value_node, child, source, constructor, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, i), source, constructor, problems)
            for i, item in enumerate(node.value)
        ]
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        problems.append(source.at(path).problem(f"cannot read value: {exc.problem}"))
        return None
