"""The package's shape: no import cycles, small modules, short functions.

The engine's modules once imported each other in one circle; a new payment kind is meant to be
one module behind the scheme seam. These checks keep both true as the code grows.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "x402_aggregator"
#: The local x402 network and fakes for tests: test support, not the product.
SUPPORT = "localnet"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 100


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package by dotted name, with whether it is a package's __init__."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def imports_of(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports, ``TYPE_CHECKING`` blocks and local imports too.

    Importing ``a.b`` also runs ``a``'s ``__init__``, but that edge is Python's, not the
    module's choice, and is left out, as import linters do.
    """
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            anchor = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join([*anchor, *([node.module] if node.module else [])])
            names = {f"{target}.{alias.name}" for alias in node.names}
            submodules = names & known
            found.update(submodules)
            if target in known and len(submodules) < len(names):
                found.add(target)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def product_modules() -> Iterator[tuple[str, Path]]:
    for name, (path, _) in modules().items():
        if f".{SUPPORT}" not in name:
            yield name, path


def test_the_package_has_no_import_cycles() -> None:
    """No group of modules imports each other in a circle, type-only imports included."""
    found = modules()
    known = set(found)
    graph = {name: imports_of(name, path, pkg, known) for name, (path, pkg) in found.items()}

    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check itself sees a circle (so that an empty answer means something)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_imports_the_package_root() -> None:
    """The root only re-exports: a module that imports it would close a circle through it."""
    found = modules()
    known = set(found)
    importers = [
        name
        for name, (path, pkg) in found.items()
        if name != "x402_aggregator" and "x402_aggregator" in imports_of(name, path, pkg, known)
    ]

    assert importers == []


@pytest.mark.parametrize("name", [name for name, _ in product_modules()])
def test_modules_stay_small(name: str) -> None:
    """Every module of the product holds one concept, in at most 400 lines."""
    path, _ = modules()[name]
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


def test_functions_stay_short() -> None:
    """No function of the product is over 100 lines."""
    long = []
    for name, path in product_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")

    assert long == []
