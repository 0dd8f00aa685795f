"""The house's plan holds: packages that say what they own, layers that talk one way, no cycles.

The import graph is read from the source (every `import`, type-only ones included), so a cycle
hidden behind `if TYPE_CHECKING:` fails here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("proxy", "strategies")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The project modules `name` imports, resolved to modules (not names inside them)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: None if is_package else -1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: set(_imports(name, path)) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(GRAPH[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
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

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def test_the_graph_is_read() -> None:
    assert "proxy.server.app" in GRAPH["proxy.cli"] or any("proxy.server" in m for m in GRAPH["proxy.cli"])
    assert "strategies.contract" in GRAPH["strategies.best_of_n.loop"]


def test_no_import_cycles_not_even_type_only_ones() -> None:
    assert _cycles() == []


def test_strategies_never_import_the_proxy() -> None:
    offenders = {m: sorted(d for d in deps if d.startswith("proxy")) for m, deps in GRAPH.items() if m.startswith("strategies")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_the_contract_is_a_leaf() -> None:
    assert GRAPH["strategies.contract"] == set()


@pytest.mark.parametrize("package", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"))
def test_every_package_says_what_it_owns(package: str) -> None:
    docstring = ast.get_docstring(ast.parse(MODULES[package].read_text(encoding="utf-8")))
    assert docstring, f"{package}/__init__.py needs a docstring saying what the package owns"


def test_every_folder_of_code_is_a_package() -> None:
    folders = {p.parent for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []


def test_proxy_is_a_map_of_packages_not_a_flat_folder() -> None:
    top = sorted(p.name for p in (ROOT / "proxy").glob("*.py") if p.name != "__init__.py")
    assert top == ["cli.py", "errors.py", "routing.py"]
