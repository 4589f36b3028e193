"""The architecture's rules, checked on the source: MLflow is imported by the tracking package
only, and no two modules import each other (directly or through others) at import time."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pipeline"


def _module(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules ``path`` imports (``from pipeline import x`` counts as ``pipeline.x`` when x is
    a module); with ``top_level_only``, not those imported inside functions."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in MODULES}
    return out


def test_mlflow_is_imported_only_by_the_tracking_package():
    importers = sorted(m for m, p in MODULES.items()
                       if any(i == "mlflow" or i.startswith("mlflow.")
                              for i in _imports(p, top_level_only=False)))
    assert importers and all(m.startswith("pipeline.tracking") for m in importers), importers


def test_no_import_cycles_between_modules():
    graph = {m: {i for i in _imports(p, top_level_only=True) if i in MODULES and i != m}
             for m, p in MODULES.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle between modules.
    graph = {m: {i for i in deps if not (i.startswith(m + ".") or m.startswith(i + "."))}
             for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append([*path[path.index(d):], d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
