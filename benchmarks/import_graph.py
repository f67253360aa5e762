"""The autoft package's import graph as the code states it, the cycles in it (there should be
none), imports made inside functions, and each module's line count.

    python benchmarks/import_graph.py [package folder, default autoft]

Stdlib only, read with ast (nothing is imported): a module-level import is an edge; an import
inside a function is listed apart, as it is an exception the code style allows only for optional
heavy dependencies. Exits 1 when there is a cycle, so CI could run it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, package: str) -> list[str]:
    """The package modules an import statement names (from a.b import c may name a.b.c)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == package]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module.split(".")[0] == package:
            return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return []


def read_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, list[str]], dict[str, int]]:
    """Edges between modules, imports inside functions ('module:line name'), line counts."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {name: set() for name in files}
    inner: dict[str, list[str]] = {}
    sizes = {name: len(path.read_text().splitlines()) for name, path in files.items()}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if id(node) in nested:
                what = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                inner.setdefault(name, []).append(f"{node.lineno} {what}")
            elif not type_checking_only(tree, node):
                edges[name] |= {target for target in imported(node, root.name)
                                if target in files and target != name}
    return edges, inner, sizes


def type_checking_only(tree: ast.Module, node: ast.AST) -> bool:
    """An import under `if TYPE_CHECKING:` never runs, so it makes no edge."""
    return any(isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
               and node in ast.walk(block) for block in tree.body)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in sorted(edges[name]):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "autoft")
    edges, inner, sizes = read_graph(root.resolve())
    print("module | lines | imports")
    for name in sorted(edges):
        targets = ", ".join(sorted(t.removeprefix(f"{root.name}.") for t in edges[name]))
        print(f"{name} | {sizes[name]} | {targets}")
    print("\nimports inside functions (allowed for optional heavy dependencies only):")
    for name, where in sorted(inner.items()):
        print(f"  {name}: {'; '.join(where)}")
    found = cycles(edges)
    print(f"\ncycles: {found or 'none'}")
    largest = max(sizes, key=sizes.get)
    print(f"largest module: {largest}, {sizes[largest]} lines")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
