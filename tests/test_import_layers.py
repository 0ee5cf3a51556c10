"""The package's import structure: no import cycles, lower layers never reach up, ``import steepest``
stays light.

The graph is read from the source (``ast``), not from ``sys.modules``: every ``import steepest.x``,
``from steepest.x import ...`` and relative ``from .x import ...`` / ``from . import x`` counts,
at module level and inside functions alike (a deferred import is still a dependency; it only hides a
cycle until the function runs). Imports under ``if TYPE_CHECKING:`` never run and are left out. A
``from package import name`` where ``name`` is a submodule is an edge to that submodule; the implicit
import of a module's parent packages is not an edge.

Two graphs are checked for cycles: modules (``steepest.bench.runner``) and top-level units, the
subpackages and modules directly under ``steepest`` (``bench``, ``optim``, ``cli``, ...; the
package's own ``__init__`` is the unit ``steepest``).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "steepest"

#: units below the benchmarks and the command line: none of them may import those
LOWER = ("polar", "geometry", "numerics", "compiled", "distributed", "optim", "constraints", "roles",
         "diagnostics", "nn", "spd")
#: the benchmark layer and the command-line layer (``steepest``, ``python -m steepest``)
BENCH = ("bench",)
CLI = ("cli", "cli_commands", "__main__")


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is_package)}`` of every module under ``src/steepest``."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ``steepest`` modules one import statement imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
        if source.split(".")[0] != PACKAGE:
            return []
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names]


def _imports() -> list[tuple[str, str, int]]:
    """Every ``(importer, imported, line)`` inside the package."""
    edges = []
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
                edges += [(module, target, node.lineno) for target in _targets(module, is_package, node)]
    return edges


IMPORTS = _imports()


def unit(module: str) -> str:
    """The top-level unit of a module: ``steepest.bench.runner`` -> ``bench``; the root -> ``steepest``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through every strongly connected component with more than one
    node or a self-loop (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    components.append(set(component))
    return [_cycle_in(component, edges) for component in components]


def _cycle_in(component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first node (breadth-first search back to it)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, ())):
                if child not in component:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return sorted(component)  # pragma: no cover - a component always holds a cycle


def _where(pairs: set[tuple[str, str]]) -> str:
    """``importer -> imported (file:line)`` for every import that realizes one of ``pairs``."""
    lines = [f"  {a} -> {b} ({MODULES[a][0].relative_to(SRC.parent)}:{line})"
             for a, b, line in IMPORTS if (a, b) in pairs or (unit(a), unit(b)) in pairs]
    return "\n".join(sorted(set(lines)))


def test_the_scan_sees_the_package():
    assert {"steepest", "steepest.cli", "steepest.bench.runner", "steepest.optim.engine"} <= set(MODULES)
    assert any(a == "steepest.bench.runner" and b == "steepest.bench.train" for a, b, _ in IMPORTS)
    # deferred (function-level) imports count too
    nested = [(a, b) for a, b, _ in IMPORTS if a == "steepest.cli_commands" and b.startswith("steepest.bench")]
    assert nested, "cli_commands imports the benchmark modules inside its functions"


def test_no_cycle_between_modules():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _ in IMPORTS:
        if a != b:
            graph[a].add(b)
    found = cycles(graph)
    pairs = {(c[i], c[i + 1]) for c in found for i in range(len(c) - 1)}
    assert not found, "import cycles between modules:\n" + "\n".join(" -> ".join(c) for c in found) + \
        "\nthrough:\n" + _where(pairs)


def test_no_cycle_between_top_level_units():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _ in IMPORTS:
        if unit(a) != unit(b):
            graph[unit(a)].add(unit(b))
    found = cycles(graph)
    pairs = {(c[i], c[i + 1]) for c in found for i in range(len(c) - 1)}
    assert not found, "import cycles between parts of the package:\n" + \
        "\n".join(" -> ".join(c) for c in found) + "\nthrough:\n" + _where(pairs)


def test_lower_layers_never_import_the_benchmarks_or_the_command_line():
    for name in LOWER:
        assert f"{PACKAGE}.{name}" in MODULES, f"{name} is not a part of the package any more: update LOWER"
    bad = {(a, b) for a, b, _ in IMPORTS if unit(a) in LOWER and unit(b) in BENCH + CLI}
    assert not bad, "lower layers import the benchmarks or the command line:\n" + _where(bad)


def test_diagnostics_never_imports_the_benchmarks():
    bad = {(a, b) for a, b, _ in IMPORTS if unit(a) == "diagnostics" and unit(b) in BENCH + CLI}
    assert not bad, "steepest.diagnostics holds measurements only; the drivers live in steepest.bench:\n" + \
        _where(bad)


def test_import_steepest_loads_no_benchmark_command_line_or_driver():
    code = ("import sys, steepest\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('steepest'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout.split()
    assert "steepest.optim" in loaded and "steepest.diagnostics" in loaded
    heavy = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in BENCH + CLI + ("hf",)]
    assert not heavy, f"`import steepest` imports {heavy}"
