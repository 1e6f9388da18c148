"""The import layering of docs/architecture.md, checked on the source (ast, nothing imported).

    recordings  <  addons  <  review_ui  <  gateway

A module may import its own package and the packages to its left, never one to its right.
The one exception is the composition root, ``addons/portcullis.py``: it wires the review
UI's server addon into the addon list, so it may import ``review_ui``, and only ``gateway``
may import it (``mitmdump -s addons/portcullis.py`` loads it as a script). ``addons/core``
imports nothing else of ours; the engine modules below import no mitmproxy, not even
through another of our modules; and the ``addons`` subpackages import each other without
cycles, apart from the known ones listed here (so none can be added).

Imports inside ``if TYPE_CHECKING:`` do not count: they never run. Modules loaded by name
(``importlib.import_module``: the UI's blueprint list, the CLI's commands) are not seen
here; docs/architecture.md says which they are. The rules schema is assembled in plain
imports by ``addons/schema.py``, above the packages that extend it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Top-level packages, lowest layer first: each may import only itself and those before it.
LAYERS = ("recordings", "addons", "review_ui", "gateway")
COMPOSITION_ROOT = "addons.portcullis"
#: Modules that take plain data and know nothing of mitmproxy (checked transitively).
ENGINE_MODULES = (
    "addons/guards/canonical.py",
    "addons/policy/fields.py",
    "addons/querylang/sql.py",
    "addons/querylang/graphql.py",
    "addons/masking/detectors.py",
    "addons/masking/pseudonyms.py",
    "addons/holds/book.py",
    "addons/holds/store.py",
    "addons/holds/desk.py",
    "addons/core/jsonbody.py",
    "addons/core/rulefile.py",
    "addons/core/secretforms.py",
    "addons/core/userregex.py",
    "addons/core/loopbridge.py",
    "addons/core/events.py",
    "recordings/*.py",
)
#: Cycles between addons subpackages that exist today. Remove one when it is broken; never add.
KNOWN_CYCLES = {
    # credentials/addon.py imports masking.bodies.media_type; masking/addon.py imports
    # credentials.addon (mask_response, refuse_unscannable: the credential scrubber is a
    # second masking engine, issue 13 deliverable 4).
    frozenset({"credentials", "masking"}),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """Every module name ``path`` imports at run time (``from a import b`` gives a and a.b)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def _graph(raw: dict[str, set[str]]) -> dict[str, set[str]]:
    """Our module -> our modules it imports (names resolved to the module that defines them)."""
    ours = set(raw)

    def resolve(target: str) -> str | None:
        while target and target not in ours:
            target = target.rpartition(".")[0]
        return target or None

    graph = {}
    for module, targets in raw.items():
        resolved = {resolve(t) for t in targets} - {None, module}
        parts = module.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ first
        resolved |= {".".join(parts[:i]) for i in range(1, len(parts))} & ours
        graph[module] = resolved
    return graph


#: Each of our modules -> every name it imports; the same, resolved to our modules only.
RAW = {module_name(p): imports_of(p) for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
GRAPH = _graph(RAW)


def test_the_graph_sees_the_code() -> None:
    """Guards the checks below against passing on an empty or misparsed graph."""
    assert "addons.policy.engine" in GRAPH and "gateway.cli" in GRAPH
    assert "addons.core.flowstate" in GRAPH["addons.policy.conditions"]
    assert "review_ui.server_addon" in GRAPH[COMPOSITION_ROOT]


def test_no_package_imports_a_higher_layer() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        rank = LAYERS.index(module.split(".")[0])
        for target in targets:
            if LAYERS.index(target.split(".")[0]) > rank and module != COMPOSITION_ROOT:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering (recordings < addons < review_ui < gateway):\n" + "\n".join(sorted(wrong))


def test_only_gateway_imports_the_composition_root() -> None:
    importers = sorted(m for m, targets in GRAPH.items() if COMPOSITION_ROOT in targets)
    assert all(m.startswith("gateway.") for m in importers), importers
    assert importers, "gateway no longer builds the addons through addons.portcullis"


def test_the_composition_root_is_the_only_addon_that_imports_the_ui() -> None:
    importers = sorted(m for m, targets in GRAPH.items()
                       if m.startswith("addons.") and any(t.startswith("review_ui") for t in targets))
    assert importers == [COMPOSITION_ROOT]


def test_core_imports_nothing_else_of_ours() -> None:
    wrong = [f"{m} -> {t}" for m, targets in GRAPH.items() if m.startswith("addons.core")
             for t in targets if t != "addons" and not t.startswith("addons.core")]
    assert not wrong, "\n".join(sorted(wrong))


def _engine_modules() -> list[str]:
    names = []
    for pattern in ENGINE_MODULES:
        matched = sorted(ROOT.glob(pattern))
        assert matched, f"ENGINE_MODULES lists {pattern}, which matches no file"
        names += [module_name(p) for p in matched]
    return names


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH[module])
    return seen


@pytest.mark.parametrize("engine", _engine_modules())
def test_engine_module_imports_no_mitmproxy(engine: str) -> None:
    through = sorted(m for m in _reachable(engine)
                     if any(t == "mitmproxy" or t.startswith("mitmproxy.") for t in RAW[m]))
    assert not through, f"{engine} loads mitmproxy through {through}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the graph's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in graph:
        if node not in index:
            connect(node)
    return components


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "addons" and len(parts) > 2 else None


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    return {frozenset(c) for c in _strongly_connected(graph) if len(c) > 1}


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert _cycles({"a": {"b"}, "b": set()}) == set()


def test_no_cycles_between_addons_subpackages_beyond_the_known_ones() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        if (source := _subpackage(module)) is not None:
            packages[source] |= {t for t in map(_subpackage, targets) if t not in (None, source)}
    for targets in list(packages.values()):
        for target in targets:
            packages.setdefault(target, set())
    found = _cycles(packages)
    assert found <= KNOWN_CYCLES, f"new import cycles between addons subpackages: {found - KNOWN_CYCLES}"
    assert found == KNOWN_CYCLES, f"broken cycles, remove them from KNOWN_CYCLES: {KNOWN_CYCLES - found}"


def test_no_cycles_between_top_level_packages() -> None:
    tops: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for module, targets in GRAPH.items():
        if module != COMPOSITION_ROOT:
            tops[module.split(".")[0]] |= {t.split(".")[0] for t in targets} - {module.split(".")[0]}
    assert _cycles(tops) == set()


def test_the_schema_module_imports_every_module_that_registers_rules_keys() -> None:
    """addons.schema assembles the rules schema in plain imports (the policy engine below
    the packages loads none of them): a package that registers a key but is not reached
    from it would make valid rules files fail with "unknown key"."""
    registering = sorted(
        module_name(p) for p in (ROOT / "addons").rglob("*.py")
        if not module_name(p).startswith("addons.policy.")
        and any(f"@{decorator}(" in p.read_text(encoding="utf-8")
                for decorator in ("rule_field", "top_level_field", "match_key")))
    assert registering, "no module registers rules keys: the scan is broken"
    missing = [m for m in registering if m not in _reachable("addons.schema")]
    assert not missing, missing


def test_the_policy_package_imports_no_other_package_of_addons() -> None:
    """The engine sits below every package that extends it (they import it, not the reverse)."""
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if m.startswith("addons.policy")
                   for t in targets if t.startswith("addons.")
                   and not t.startswith(("addons.policy", "addons.core")) and t != "addons")
    assert not wrong, wrong


def test_compiling_rules_without_the_assembled_schema_is_refused() -> None:
    code = ("from addons.policy.engine import compile_policy\n"
            "try:\n    compile_policy('version: 1\\nrules: []\\n')\n"
            "except RuntimeError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "import addons.schema first" in out
