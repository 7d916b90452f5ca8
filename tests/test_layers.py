"""The package's layers: each module imports only its own layer or those below it, and no import
(function-local ones included) closes a circle.

Layers, lowest first: core, data, imaging, models, workflows, cli. The graph is read with ``ast``
from the source, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wbc"
LAYERS = ("core", "data", "imaging", "models", "workflows", "cli")
TOP = {"wbc", "wbc.__main__"}  # the package's own entry points may import anything


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The wbc modules ``path`` imports anywhere in its body. ``from wbc.x import y`` counts as
    ``wbc.x.y`` when that is a module, else as ``wbc.x``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, name, known) for name, path in found.items()}


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    if name in TOP:
        return None
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    raise AssertionError(f"{name}: not in a layer ({', '.join(LAYERS)})")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, targets in graph().items():
        mine = layer_of(name)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_no_import_circles():
    edges = {k: {t for t in v if t not in TOP} for k, v in graph().items()}
    assert cycles(edges) == []


def unresolved_imports(path: Path, known: set[str]) -> list[str]:
    """``from wbc... import`` statements that name no wbc module: a moved module's old name
    (``from wbc import crop``) fails only when that line runs, so it is looked for here."""
    missing = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "wbc":
                names = [a.name for a in node.names if a.name not in {"__version__"}]
                missing += [f"wbc.{n}" for n in names if f"wbc.{n}" not in known]
            elif node.module.startswith("wbc.") and node.module not in known:
                missing.append(node.module)
        elif isinstance(node, ast.Import):
            missing += [
                a.name for a in node.names if a.name.startswith("wbc.") and a.name not in known
            ]
    return missing


def test_every_wbc_import_names_a_module_that_exists():
    known = set(modules())
    roots = [PACKAGE, PACKAGE.parent / "tests", PACKAGE.parent / "benchmarks"]
    roots += [PACKAGE.parent / "scripts", PACKAGE.parent / "research"]
    missing = [
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for root in roots
        for path in sorted(root.rglob("*.py"))
        for name in unresolved_imports(path, known)
    ]
    assert missing == []


def test_the_walker_sees_function_local_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from wbc.core import config\n    import wbc.core.errors\n")
    known = {"wbc.core", "wbc.core.config", "wbc.core.errors", "wbc.probe"}
    assert imports_of(source, "wbc.probe", known) == {"wbc.core.config", "wbc.core.errors"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
