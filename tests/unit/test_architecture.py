"""The package structure stays as docs/architecture.md draws it: imports run downward only
(no cycle between the packages of ``src/dde``), and no module grows past 500 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "dde"
MAX_LINES = 500

LAYERS: dict[str, int] = {
    # the vocabulary everything may use
    "config": 0, "dicom": 0, "telemetry": 0, "logs": 0, "synthetic": 0,
    # the only place with SQL and files
    "store": 1, "reports": 2,
    # pure decisions and the configuration nodes share; the configuration files (validated
    # with the rules); their watch and the destinations
    "routing": 2, "shared_config": 2, "config_store": 3, "config_watch": 4, "endpoints": 4,
    # the stages
    "receiving": 5, "delivery": 5, "sending": 5, "reconcile": 6,
    # the web face (given the running router's parts), the one assembly, the stack
    "web": 7, "runtime": 8, "stack": 8,
    # the command line
    "cli": 9, "__main__": 10,
}
"""Each package (or top-level module) of ``src/dde`` imports only from lower layers."""


def node_of(module: str) -> str:
    """``dde.store.spool`` → ``store``; a top-level module is its own node."""
    return module.split(".")[1]


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imports_of(path: Path) -> set[str]:
    """Every ``dde.…`` module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dde."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dde":
                found.update(f"dde.{a.name}" for a in node.names)
            elif node.module.startswith("dde."):
                found.add(node.module)
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in modules():
        if module == "dde":
            continue
        source = node_of(module)
        edges = graph.setdefault(source, set())
        edges.update(node_of(m) for m in imports_of(path) if node_of(m) != source)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_cycle_between_packages() -> None:
    assert cycles(package_graph()) == []


def test_every_package_has_a_layer() -> None:
    assert sorted(set(package_graph()) - set(LAYERS)) == []


def test_imports_run_downward_only() -> None:
    upward = sorted(f"{source} → {target}" for source, targets in package_graph().items()
                    for target in targets if LAYERS[target] >= LAYERS[source])
    assert upward == []


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from dde.runtime.core import RouterCore\n")
    assert imports_of(module) == {"dde.runtime.core"}


def test_no_module_over_500_lines() -> None:
    long = {module: n for module, path in modules()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
