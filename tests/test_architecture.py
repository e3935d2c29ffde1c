"""The layering the architecture doc promises: core → adapters → bench/CLI, no cycles, small modules.

Imports are read from the source (``ast``), every ``import`` statement counted wherever it sits: a
lazy import inside a function is still a dependency, and so is one under ``if TYPE_CHECKING:`` (a
type named across a cycle is a cycle of concepts, however the interpreter loads it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder → the package name it is installed as (pyproject.toml's package-dir).
FOLDERS = {"sadp_data": "sadp_data", "adapters": "sadp_data.adapters", "bench": "sadp_data.bench"}
#: The core modules allowed to import bench/ or adapters/: the command line's entry point.
ENTRY_POINTS = {"sadp_data.cli"}
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that module ``name`` imports (resolved to the longest known module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_layer(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_core_imports_neither_bench_nor_adapters() -> None:
    core = [n for n in MODULES if not _is_layer(n, "sadp_data.bench") and not _is_layer(n, "sadp_data.adapters")]
    offenders = {
        name: sorted(t for t in GRAPH[name] if _is_layer(t, "sadp_data.bench") or _is_layer(t, "sadp_data.adapters"))
        for name in core
        if name not in ENTRY_POINTS
    }
    assert not {name: targets for name, targets in offenders.items() if targets}


def test_adapters_do_not_import_bench() -> None:
    offenders = {
        name: sorted(t for t in GRAPH[name] if _is_layer(t, "sadp_data.bench"))
        for name in MODULES
        if _is_layer(name, "sadp_data.adapters")
    }
    assert not {name: targets for name, targets in offenders.items() if targets}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _package_edges(name: str) -> set[str]:
    """Imports of ``name`` without those of its own parent packages (``from . import x`` reads ``__init__``)."""
    parents = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
    return {target for target in GRAPH[name] if target not in parents}


def test_no_import_cycles() -> None:
    graph = {name: _package_edges(name) for name in MODULES}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, (
        f"{MODULES[name].relative_to(ROOT)} has {lines} lines (limit {MAX_LINES}): split it by concept"
    )
